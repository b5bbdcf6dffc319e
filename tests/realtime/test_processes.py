"""Real ``igsync serve`` processes: fan-out across processes and graceful shutdown (1001)."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from config import Settings
from server.app.embedded import free_port
from server.inbox import events as ev
from tests.support.helpers import Client, ServerProcessHandle, messaging_body, server_env, text_item
from tests.support.realtime import WsClient
from tests.support.server import connect_tenant, make_settings

pytestmark = pytest.mark.slow


def _process(settings: Settings, tmp_path: Path, name: str) -> ServerProcessHandle:
    env = server_env(settings.replace(port=free_port()), IGSYNC_WS_PING_SECS="5")
    return ServerProcessHandle(env, tmp_path / f"{name}.log").start()


@pytest.fixture
def two_processes(stores, tmp_path: Path) -> Iterator[tuple[ServerProcessHandle, ServerProcessHandle]]:
    settings = make_settings(stores, tmp_path)
    first = _process(settings, tmp_path, "a")
    try:
        second = _process(settings, tmp_path, "b")
    except BaseException:
        first.kill()
        raise
    yield first, second
    for handle in (first, second):
        handle.kill()


async def test_webhook_into_one_process_reaches_a_socket_on_the_other(two_processes) -> None:
    a, b = two_processes
    client_a, client_b = Client(a.base_url), Client(b.base_url)
    tenant = await connect_tenant(client_a)
    on_b = await WsClient.connect(b.base_url, tenant.token)
    on_a = await WsClient.connect(a.base_url, tenant.token)
    reply_b = await on_b.subscribe(channel_id=tenant.channel["id"])
    reply_a = await on_a.subscribe(channel_id=tenant.channel["id"])
    assert reply_a["epoch"] == reply_b["epoch"]

    assert (await client_a.webhook(messaging_body(text_item("mid-x-1", "into A")))).code == 200
    from_a = await on_b.events(3)
    assert [f["seq"] for f in from_a] == [1, 2, 3]
    assert from_a[0]["event"] == ev.CHAT_MESSAGE and from_a[0]["data"]["message"]["content"] == "into A"
    assert (await client_b.webhook(messaging_body(text_item("mid-x-2", "into B")))).code == 200
    assert [f["seq"] for f in await on_b.events(3)] == [4, 5, 6]
    # The socket on the publishing process got each event once too (own publish + pub/sub echo).
    assert [f["seq"] for f in await on_a.events(6)] == [1, 2, 3, 4, 5, 6]

    # Concurrent webhooks into both processes: one seq line, the same order on both sockets.
    posts = []
    for i in range(12):
        client = client_a if i % 2 == 0 else client_b
        posts.append(client.webhook(messaging_body(text_item(f"mid-c-{i}", f"c {i}", sender=f"62000000009{i:05d}"))))
    assert {r.code for r in await asyncio.gather(*posts)} == {200}
    seen_a = await on_a.events(36)
    seen_b = await on_b.events(36)
    assert [f["seq"] for f in seen_a] == list(range(7, 43))
    assert seen_a == seen_b
    assert await on_a.quiet() == [] and await on_b.quiet() == []
    for ws in (on_a, on_b):
        ws.close()
    client_a.close()
    client_b.close()


async def test_sigterm_closes_sockets_with_1001_and_exits(stores, tmp_path: Path) -> None:
    settings = make_settings(stores, tmp_path)
    handle = _process(settings, tmp_path, "term")
    try:
        client = Client(handle.base_url)
        tenant = await connect_tenant(client)
        sockets = [await WsClient.connect(handle.base_url, tenant.token) for _ in range(3)]
        for ws in sockets:
            await ws.subscribe(channel_id=tenant.channel["id"])
        await client.webhook(messaging_body(text_item("mid-term-1", "before shutdown")))
        for ws in sockets:
            assert len(await ws.events(3)) == 3
        handle.proc.send_signal(signal.SIGTERM)
        for ws in sockets:
            assert await ws.drain_until_closed() == 0
            assert ws.close_code == 1001
        # terminate() waits at most 15 s (the process's own bound is lifecycle.SHUTDOWN_SECS = 10).
        code = await asyncio.get_running_loop().run_in_executor(None, handle.terminate, signal.SIGTERM, 15)
        assert code == 0, handle.output()
        assert "Traceback" not in handle.output()
        # New connections are refused once it has gone.
        with pytest.raises(OSError):
            await WsClient.connect(handle.base_url, tenant.token)
        client.close()
    finally:
        handle.kill()
