"""``igsync serve --workers N``: pre-forked workers on one port, metrics summed across them,
SIGTERM drains every worker (server/app/workers.py)."""

from __future__ import annotations

import asyncio
import os
import re
import signal
from pathlib import Path

import pytest

from server.app.embedded import free_port
from server.app.workers import worker_count
from server.inbox import events as ev
from tests.support.helpers import (
    ADMIN_TOKEN,
    Client,
    ServerProcessHandle,
    messaging_body,
    server_env,
    text_item,
    wait_for,
)
from tests.support.realtime import WsClient
from tests.support.server import connect_tenant, make_settings

pytestmark = pytest.mark.slow


def _children(pid: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def _alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


def _sample(text: str, name: str, labels: str = "") -> float:
    match = re.search(rf"^{re.escape(name)}{re.escape(labels)} (\S+)$", text, re.M)
    assert match, f"{name}{labels} not in /metrics"
    return float(match.group(1))


def test_worker_count() -> None:
    assert worker_count("3") == 3
    assert worker_count("auto") >= 1
    with pytest.raises(ValueError):
        worker_count("0")


async def test_two_workers_share_the_port_the_metrics_and_the_shutdown(stores, tmp_path: Path) -> None:
    settings = make_settings(stores, tmp_path).replace(port=free_port())
    handle = ServerProcessHandle(server_env(settings), tmp_path / "workers.log", args=("--workers", "2"))
    handle.start(timeout=60)
    try:
        assert handle.proc is not None
        await wait_for(lambda: len(_children(handle.proc.pid)) == 2, timeout=30)
        workers = _children(handle.proc.pid)
        client = Client(handle.base_url)
        tenant = await connect_tenant(client)
        # Sockets over separate connections: the kernel spreads them over both workers.
        sockets = [await WsClient.connect(handle.base_url, tenant.token) for _ in range(6)]
        for ws in sockets:
            await ws.subscribe(channel_id=tenant.channel["id"])

        # Webhooks over separate connections too, whichever worker takes each: every socket
        # sees every message (fan-out across workers goes through Redis, as across machines).
        posts = [
            Client(handle.base_url).webhook(
                messaging_body(text_item(f"mid-w-{i}", f"w {i}", sender=f"6200000001{i:06d}"))
            )
            for i in range(10)
        ]
        assert {r.code for r in await asyncio.gather(*posts)} == {200}
        for ws in sockets:
            frames = await ws.events(30)
            messages = {f["data"]["message"]["mid"] for f in frames if f["event"] == ev.CHAT_MESSAGE}
            assert messages == {f"mid-w-{i}" for i in range(10)}

        # /metrics is the sum of both workers, whichever answers.
        metrics = Client(handle.base_url)
        for _ in range(4):
            response = await metrics.get("/metrics", token=ADMIN_TOKEN)
            text = response.body.decode()
            assert _sample(text, "igsync_webhook_requests_total", '{outcome="processed"}') == 10
            assert _sample(text, "igsync_ws_connections") == 6

        # SIGTERM to the supervisor: every socket closed with 1001 by its own worker, all exit.
        handle.proc.send_signal(signal.SIGTERM)
        for ws in sockets:
            assert await ws.drain_until_closed() == 0
            assert ws.close_code == 1001
        code = await asyncio.get_running_loop().run_in_executor(None, handle.terminate, signal.SIGTERM, 30)
        assert code == 0, handle.output()
        assert "Traceback" not in handle.output()
        assert not any(_alive(pid) for pid in workers)
        assert await tenant_messages(settings) == 10
        client.close()
        metrics.close()
    finally:
        handle.kill()


async def tenant_messages(settings) -> int:
    from models.store import Store

    store = Store(settings.mongo_url or "", settings.mongo_db)
    try:
        return await store.db.messages.count_documents({})
    finally:
        await store.close()


async def test_a_worker_that_dies_is_replaced(stores, tmp_path: Path) -> None:
    settings = make_settings(stores, tmp_path).replace(port=free_port())
    handle = ServerProcessHandle(server_env(settings), tmp_path / "respawn.log", args=("--workers", "2"))
    handle.start(timeout=60)
    try:
        assert handle.proc is not None
        supervisor = handle.proc.pid
        await wait_for(lambda: len(_children(supervisor)) == 2, timeout=30)
        dead = _children(supervisor)[0]
        os.kill(dead, signal.SIGKILL)
        await wait_for(lambda: len(_children(supervisor)) == 2 and dead not in _children(supervisor), timeout=30)
        client = Client(handle.base_url)
        for _ in range(6):  # whichever worker answers
            assert (await client.get("/readyz")).code == 200
        client.close()
        code = await asyncio.get_running_loop().run_in_executor(None, handle.terminate, signal.SIGTERM, 30)
        assert code == 0, handle.output()
        assert "starting a new one" in handle.output()
    finally:
        handle.kill()
