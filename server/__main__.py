"""``python -m server`` is the ``igsync`` command."""

import sys

from server.app.cli import main

sys.exit(main())
