"""Delivery under trouble: a client that stops reading, and Redis going away and coming back."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from server.app.embedded import EmbeddedStores
from server.inbox import events as ev
from tests.support.helpers import messaging_body, text_item, wait_for
from tests.support.realtime import WsClient
from tests.support.server import RunningServer, connect_tenant, make_settings, start_server, stop_server

# 32 KiB of data per event: a few hundred fill the socket buffers of a client that stopped reading.
BIG = "x" * 32_768


async def test_a_client_that_stops_reading_is_dropped_and_others_keep_receiving(stores, tmp_path: Path) -> None:
    server = await start_server(make_settings(stores, tmp_path, ws_queue_max=8))
    try:
        tenant = await connect_tenant(server.client)
        channel_id = tenant.channel["id"]
        stuck = await WsClient.connect(server.base_url, tenant.token)
        await stuck.subscribe(channel_id=channel_id)  # ... and never reads again
        normal = await WsClient.connect(server.base_url, tenant.token)
        await normal.subscribe(channel_id=channel_id)
        received: list[int] = []

        async def read_all() -> None:
            while True:
                frame = await normal.next_event(timeout=30)
                received.append(frame["seq"])

        reader = asyncio.get_running_loop().create_task(read_all())
        slow = server.core.metrics.ws_disconnects.labels(reason="slow_consumer")
        published = 0
        # Bounded: a few MB of socket buffers fill long before 2 000 events × 32 KiB. The
        # publisher keeps pace with the normal reader (a client that keeps up), in bursts
        # smaller than the queue bound.
        while slow._value.get() == 0 and published < 2000:
            await server.core.sink.publish(
                [ev.Event(ev.MESSAGE_UPDATED, channel_id, None, {"pad": BIG, "n": published + i}) for i in range(4)]
            )
            published += 4
            await wait_for(lambda n=published: len(received) >= n, timeout=30, interval=0.001)
        assert slow._value.get() == 1, "the stuck client was never dropped"
        assert received == list(range(1, published + 1))
        reader.cancel()

        # The stuck client finds a 1013 close after whatever had reached its buffers.
        await stuck.drain_until_closed(timeout=30)
        assert stuck.close_code == 1013
        assert server.core.metrics.ws_connections._value.get() == 1
        normal.close()
    finally:
        await stop_server(server)


@pytest.fixture
def own_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedStores]:
    """A Redis of this test's own, to stop and start (the session one is shared)."""
    redis = EmbeddedStores(tmp_path_factory.mktemp("own-redis"), mongo=False, lock=False).start()
    yield redis
    redis.stop()


@pytest.fixture
async def redis_server(stores, own_redis: EmbeddedStores, tmp_path: Path) -> AsyncIterator[RunningServer]:
    server = await start_server(make_settings(stores, tmp_path, redis_url=own_redis.redis_url))
    yield server
    await stop_server(server)


async def test_redis_down_local_sockets_still_get_events_and_pubsub_recovers(
    redis_server: RunningServer, own_redis: EmbeddedStores
) -> None:
    server = redis_server
    hub = server.core.realtime
    assert hub is not None
    tenant = await connect_tenant(server.client)
    channel_id = tenant.channel["id"]
    ws = await WsClient.connect(server.base_url, tenant.token)
    first = await ws.subscribe(channel_id=channel_id)
    await server.client.webhook(messaging_body(text_item("mid-up-1", "redis up")))
    assert [f["seq"] for f in await ws.events(3)] == [1, 2, 3]
    await wait_for(lambda: hub.link.connected)

    own_redis.stop_redis()
    response = await server.client.webhook(messaging_body(text_item("mid-down-1", "redis down")))
    assert response.code == 200  # MongoDB stored it; Redis is only the fan-out
    degraded = await ws.events(3)
    assert [f["seq"] for f in degraded] == [None, None, None]
    assert degraded[0]["data"]["message"]["content"] == "redis down"
    assert not hub.breaker.allows()  # further webhooks skip Redis instead of waiting on it
    await server.client.webhook(messaging_body(text_item("mid-down-2", "still down")))
    assert [f["seq"] for f in await ws.events(3)] == [None, None, None]
    # A new subscriber meanwhile: this process still knows the channel's last position...
    late = await WsClient.connect(server.base_url, tenant.token)
    reply = await late.subscribe(conversation_id=degraded[0]["conversation_id"])
    assert reply["latest_seq"] == 3 and reply["epoch"] == first["epoch"]
    # ... but for a channel it was not following there is none to give; local events flow all the same.
    second = await connect_tenant(server.client, page_id="17841400000000777", username="second")
    other_ws = await WsClient.connect(server.base_url, second.token)
    reply = await other_ws.subscribe(channel_id=second.channel["id"])
    assert reply["latest_seq"] is None and reply["epoch"] is None
    body = messaging_body(
        text_item("mid-second-1", "hi", recipient="17841400000000777"), account_id="17841400000000777"
    )
    await server.client.webhook(body)
    assert [f["seq"] for f in await other_ws.events(3)] == [None, None, None]

    reconnects = server.core.metrics.pubsub_reconnects
    own_redis.start_redis()  # same port, empty: the old log is gone
    await wait_for(lambda: reconnects._value.get() >= 1, timeout=30)

    # Positions are void (new epoch): every subscriber is told, and the events that went
    # out without a seq are announced in the log for every process's subscribers.
    resync = await ws.next_event()
    assert resync["event"] == ev.RESYNC_REQUIRED and resync["data"]["epoch"] != first["epoch"]
    new_epoch = resync["data"]["epoch"]
    logged = await ws.next_event()
    assert logged["event"] == ev.RESYNC_REQUIRED and logged["seq"] == 1
    assert logged["data"] == {"latest_seq": 1, "epoch": new_epoch} and logged["conversation_id"] is None
    assert (await late.next_event())["event"] == ev.RESYNC_REQUIRED
    assert (await late.next_event())["data"] == {"latest_seq": 1, "epoch": new_epoch}
    # The channel that had no position gets one now.
    gained = await other_ws.next_event()
    assert gained["event"] == ev.RESYNC_REQUIRED and gained["data"]["latest_seq"] == 0

    # Back to normal: sequenced, live, across the pub/sub subscription that healed itself.
    await wait_for(lambda: hub.breaker.allows())
    await server.client.webhook(messaging_body(text_item("mid-up-2", "redis back")))
    assert [f["seq"] for f in await ws.events(3)] == [2, 3, 4]
    assert [f["seq"] for f in await late.events(3)] == [2, 3, 4]
    # Published by another process (here: straight into Redis): reaches us by pub/sub.
    other = ev.Event(ev.MESSAGE_DELETED, channel_id, degraded[0]["conversation_id"], {"message_id": "m"})
    from server.realtime.eventlog import EventLog, encode

    log = EventLog(server.core.redis, max_events=100, ttl_secs=60, sharded=server.core.settings.redis_cluster)
    await log.append(channel_id, [encode(other)])
    frame = await ws.next_event()
    assert frame["event"] == ev.MESSAGE_DELETED and frame["seq"] == 5
    assert await ws.quiet() == []
    for client in (ws, late, other_ws):
        client.close()


async def test_a_hanging_redis_costs_one_short_timeout_and_never_a_duplicate(
    redis_server: RunningServer, own_redis: EmbeddedStores
) -> None:
    """Redis stops answering (SIGSTOP) instead of refusing: the publish gives up after
    IGSYNC_REALTIME_REDIS_TIMEOUT_MS, the event goes to local sockets without a seq, and
    whether or not Redis runs the script once it wakes, each event reaches the socket once."""
    import os
    import signal

    server = redis_server
    hub = server.core.realtime
    assert hub is not None
    tenant = await connect_tenant(server.client)
    ws = await WsClient.connect(server.base_url, tenant.token)
    await ws.subscribe(channel_id=tenant.channel["id"])
    await server.client.webhook(messaging_body(text_item("mid-hang-1", "before")))
    assert [f["seq"] for f in await ws.events(3)] == [1, 2, 3]

    redis_pid = own_redis._redis.proc.pid  # the test's own Redis child
    os.kill(redis_pid, signal.SIGSTOP)
    try:
        response = await server.client.webhook(messaging_body(text_item("mid-hang-2", "while hanging")))
        assert response.code == 200
        assert [f["seq"] for f in await ws.events(3)] == [None, None, None]
        assert not hub.breaker.allows()
    finally:
        os.kill(redis_pid, signal.SIGCONT)
    await wait_for(lambda: hub.breaker.allows())
    await server.client.webhook(messaging_body(text_item("mid-hang-3", "after")))
    frames = await ws.events(4)  # the three of "after" and the logged resync_required
    frames += await ws.quiet()
    chats = [f["data"]["message"]["content"] for f in frames if f["event"] == ev.CHAT_MESSAGE]
    assert chats == ["after"]
    assert [f["event"] for f in frames].count(ev.RESYNC_REQUIRED) == 1
    sequenced = [f["seq"] for f in frames if f["event"] != ev.RESYNC_REQUIRED]
    assert sequenced == sorted(sequenced) and None not in sequenced
    ws.close()
