"""Fixtures shared by the trigger tests (registered in ``conftest.py`` as a pytest plugin):
an igsync with fast trigger timings, a real receiver, and a look at the job queue."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from config import Settings
from tests.conftest import RunningServer, make_settings, start_server, stop_server
from tests.triggers_support import FAST_TRIGGERS, TriggerReceiver


@pytest.fixture
def trigger_settings(stores: Any, tmp_path: Any) -> Settings:
    return make_settings(stores, tmp_path, **FAST_TRIGGERS)


@pytest.fixture
async def igsync(trigger_settings: Settings) -> AsyncIterator[RunningServer]:
    running = await start_server(trigger_settings)
    yield running
    await stop_server(running)


@pytest.fixture
async def receiver() -> AsyncIterator[TriggerReceiver]:
    r = TriggerReceiver().start()
    yield r
    await r.stop()


async def jobs(server: RunningServer, **query: Any) -> list[dict[str, Any]]:
    return await server.core.store.trigger_jobs.coll.find(query).to_list(None)
