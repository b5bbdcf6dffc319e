"""The plain events environment fixture (registered in ``conftest.py`` as a pytest plugin):
a real igsync with the events capability, fake Graph API and CDN. Tests that need another
variant (realtime, media workers) define their own ``env``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.events import EventsEnv, events_env


@pytest.fixture
async def env(stores: Any, tmp_path: Path) -> AsyncIterator[EventsEnv]:
    async with events_env(stores, tmp_path) as e:
        yield e
