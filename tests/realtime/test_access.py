"""``GET /ws`` itself: auth before the upgrade, origins, command errors, limits, no token in logs."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from tornado.websocket import websocket_connect

from server.realtime.access import origin_allowed, token_from
from tests.support.helpers import ADMIN_TOKEN, INTERNAL_TOKEN, messaging_body, text_item
from tests.support.realtime import WsClient, refused, ws_url
from tests.support.server import RunningServer, Tenant, connect_tenant, make_settings, start_server, stop_server


async def test_missing_or_bad_token_is_401_json_before_the_upgrade(server: RunningServer) -> None:
    for token in (None, "igs_not-a-real-token"):
        status, body = await refused(server.base_url, token)
        assert status == 401 and body["error"] == "unauthorized" and body["message"]
    status, body = await refused(server.base_url, "igs_wrong", via_query=True)
    assert status == 401


async def test_a_token_of_another_kind_is_403(server: RunningServer) -> None:
    for token in (ADMIN_TOKEN, INTERNAL_TOKEN):
        status, body = await refused(server.base_url, token)
        assert status == 403 and body["error"] == "forbidden"


async def test_token_in_the_query_works_and_is_never_logged(
    server: RunningServer, tenant: Tenant, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    ws = await WsClient.connect(server.base_url, tenant.token, via_query=True)
    await ws.subscribe(channel_id=tenant.channel["id"])
    await server.client.webhook_fixture("customer_text")
    assert len(await ws.events(3)) == 3
    ws.close()
    await refused(server.base_url, "igs_bad-query-token", via_query=True)
    access = [r for r in caplog.records if r.name == "igsync.access"]
    assert any(r.getMessage().startswith("GET /ws 101 WebSocketHandler") for r in access), [
        r.getMessage() for r in access
    ]
    assert any(r.getMessage().startswith("GET /ws 401") for r in access)
    text = "\n".join(r.getMessage() + str(r.__dict__) for r in caplog.records)
    assert tenant.token not in text and "igs_bad-query-token" not in text and "access_token" not in text


@pytest.mark.parametrize(
    ("origin", "ok"),
    [(None, True), ("same", True), ("https://inbox.example.com", True), ("https://evil.example.net", False)],
)
async def test_origin_policy(stores, tmp_path: Path, origin: str | None, ok: bool) -> None:
    server = await start_server(make_settings(stores, tmp_path, ws_allowed_origins=("https://inbox.example.com",)))
    try:
        tenant = await connect_tenant(server.client)
        headers = {}
        if origin == "same":
            headers["Origin"] = f"http://127.0.0.1:{server.port}"
        elif origin is not None:
            headers["Origin"] = origin
        if ok:
            ws = await WsClient.connect(server.base_url, tenant.token, headers=headers)
            await ws.subscribe(channel_id=tenant.channel["id"])
            ws.close()
        else:
            status, body = await refused(server.base_url, tenant.token, headers=headers)
            assert status == 403 and body["error"] == "origin_not_allowed"
    finally:
        await stop_server(server)


def test_origin_rules() -> None:
    assert origin_allowed(None, "h:1", None, ())
    assert not origin_allowed(None, "h:1", "cross-site", ())
    assert origin_allowed("http://h:1", "h:1", None, ())
    assert origin_allowed("https://other", "h:1", "same-origin", ())
    assert not origin_allowed("https://other", "h:1", "cross-site", ())
    assert origin_allowed("https://Other/", "h:1", "cross-site", ("https://other",))
    assert origin_allowed("https://any", "h:1", None, ("*",))
    assert token_from("Bearer abc", "def") == "abc"
    assert token_from(None, " def ") == "def"
    assert token_from("Basic x", None) is None


async def test_bad_commands_get_error_frames_and_the_socket_stays_open(server: RunningServer, tenant: Tenant) -> None:
    ws = await WsClient.connect(server.base_url, tenant.token)
    cases = [
        ("not json", "invalid_json", None),
        ("[1, 2]", "invalid_command", None),
        ('{"action": "dance"}', "invalid_command", "action"),
        ('{"action": "subscribe"}', "validation_error", "channel_id"),
        ('{"action": "subscribe", "channel_id": "a", "conversation_id": "b"}', "validation_error", "channel_id"),
        ('{"action": "subscribe", "channel_id": 5}', "validation_error", "channel_id"),
        ('{"action": "subscribe", "channel_id": "a", "since_seq": -1}', "validation_error", "since_seq"),
        ('{"action": "subscribe", "channel_id": "a", "since_seq": "1"}', "validation_error", "since_seq"),
        ('{"action": "subscribe", "channel_id": "a", "extra": 1}', "validation_error", "extra"),
        ('{"action": "unsubscribe", "channel_id": "a", "since_seq": 1}', "validation_error", "since_seq"),
        ('{"action": "subscribe", "channel_id": "not-an-id"}', "not_found", None),
        ('{"action": "subscribe", "conversation_id": "64b000000000000000000000"}', "not_found", None),
    ]
    for raw, code, field in cases:
        await ws.conn.write_message(raw)
        frame = await ws.next_event()
        assert frame["event"] == "error" and frame["error"] == code, (raw, frame)
        assert frame["message"]
        if field is not None:
            assert field in frame["fields"], (raw, frame)
    assert await ws.quiet() == []
    await ws.send({"action": "ping"})
    assert await ws.next_event() == {"event": "pong"}
    ws.close()


async def test_frames_over_64_kib_close_the_socket(server: RunningServer, tenant: Tenant) -> None:
    conn = await websocket_connect(ws_url(server.base_url, f"access_token={tenant.token}"))
    await conn.write_message('{"action": "ping", "pad": "' + "x" * 70_000 + '"}')
    assert await conn.read_message() is None
    assert conn.close_code == 1009  # message too big


async def test_connection_gauge_and_client_close_are_counted(server: RunningServer, tenant: Tenant) -> None:
    metrics = server.core.metrics
    before = metrics.ws_disconnects.labels(reason="client_closed")._value.get()
    ws = await WsClient.connect(server.base_url, tenant.token)
    await ws.subscribe(channel_id=tenant.channel["id"])
    assert metrics.ws_connections._value.get() == 1
    ws.close()
    from tests.support.helpers import wait_for

    await wait_for(lambda: metrics.ws_connections._value.get() == 0)
    assert metrics.ws_disconnects.labels(reason="client_closed")._value.get() == before + 1
    hub = server.core.realtime
    assert hub is not None and not hub.sessions and not hub.registry.routes
    # No socket, no route: the process no longer follows the channel.
    await server.client.webhook(messaging_body(text_item("mid-after-close", "nobody listens")))
    text = (await server.client.get("/metrics")).body.decode()
    for name in ("igsync_ws_connections 0.0", "igsync_pubsub_reconnects_total 0.0", "igsync_event_delivery_seconds"):
        assert name in text


def _delivered(server: RunningServer) -> float:
    for metric in server.core.metrics.event_delivery.collect():
        for sample in metric.samples:
            if sample.name.endswith("_count"):
                return sample.value
    return 0.0


async def test_event_delivery_seconds_is_observed_per_event_written(server: RunningServer, tenant: Tenant) -> None:
    from tests.support.helpers import wait_for

    first = await WsClient.connect(server.base_url, tenant.token)
    second = await WsClient.connect(server.base_url, tenant.token)
    for ws in (first, second):
        await ws.subscribe(channel_id=tenant.channel["id"])
    before = _delivered(server)
    await server.client.webhook_fixture("customer_text")
    for ws in (first, second):
        await ws.events(3)
    await wait_for(lambda: _delivered(server) >= before + 6)  # 3 events × 2 sockets, once each
    assert await first.quiet() == [] and _delivered(server) == before + 6
    first.close()
    second.close()


@pytest.mark.slow
async def test_server_pings_and_drops_a_client_that_never_answers(stores, tmp_path: Path) -> None:
    """A raw client that completes the handshake and then ignores everything: the server
    pings it every IGSYNC_WS_PING_SECS and drops it when no pong comes."""
    import asyncio
    import base64
    import os

    from tests.support.helpers import wait_for

    server = await start_server(make_settings(stores, tmp_path, ws_ping_secs=1))
    try:
        tenant = await connect_tenant(server.client)
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            (
                f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nAuthorization: Bearer {tenant.token}\r\n\r\n"
            ).encode()
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert head.startswith(b"HTTP/1.1 101")
        first = await asyncio.wait_for(reader.readexactly(2), 10)
        assert first[0] & 0x0F == 0x9  # a ping, which we never answer
        metrics = server.core.metrics
        await wait_for(lambda: metrics.ws_disconnects.labels(reason="ping_timeout")._value.get() == 1, timeout=20)
        assert metrics.ws_connections._value.get() == 0
        writer.close()
    finally:
        await stop_server(server)
