"""``python -m server`` is the ``igsync`` command."""

import sys

from server.cli import main

sys.exit(main())
