"""Fixtures shared by the trigger tests (registered in ``conftest.py`` as a pytest plugin):
an igsync with fast trigger timings, a real receiver, and a look at the job queue."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from config import Settings
from tests.fakes.receiver import TriggerReceiver
from tests.support.helpers import ROOT, server_env
from tests.support.server import RunningServer, make_settings, start_server, stop_server
from tests.support.triggers import FAST_TRIGGERS


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


async def cli(settings: Settings, *args: str) -> tuple[int, Any, str]:
    """``python -m server ARGS`` in a child process against the test's stores:
    (exit code, its JSON output or None, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "server",
        *args,
        cwd=ROOT,
        env=server_env(settings),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    return proc.returncode or 0, orjson.loads(out) if out.strip() else None, err.decode()
