"""Resume with ``since_seq``/``epoch``: exactly the missed events, or ``resync_required``."""

from __future__ import annotations

from pathlib import Path

from server.inbox import events as ev
from server.realtime.eventlog import keys
from tests.support.helpers import messaging_body, text_item
from tests.support.realtime import WsClient
from tests.support.server import RunningServer, Tenant, make_settings, start_server, stop_server


async def _customer_messages(server: RunningServer, prefix: str, count: int) -> None:
    for i in range(count):
        response = await server.client.webhook(messaging_body(text_item(f"{prefix}-{i}", f"{prefix} {i}")))
        assert response.code == 200


async def test_resume_after_a_disconnect_gets_exactly_the_missed_events(server: RunningServer, tenant: Tenant) -> None:
    channel_id = tenant.channel["id"]
    ws = await WsClient.connect(server.base_url, tenant.token)
    first = await ws.subscribe(channel_id=channel_id)
    await _customer_messages(server, "before", 1)
    seen = await ws.events(3)
    assert [f["seq"] for f in seen] == [1, 2, 3]
    ws.close()

    await _customer_messages(server, "offline", 2)  # seq 4..9 while away

    again = await WsClient.connect(server.base_url, tenant.token)
    reply = await again.subscribe(channel_id=channel_id, since_seq=3, epoch=first["epoch"])
    assert reply["latest_seq"] == 9 and reply["epoch"] == first["epoch"]
    replayed = await again.events(6)
    assert [f["seq"] for f in replayed] == [4, 5, 6, 7, 8, 9]
    assert [f["data"]["message"]["content"] for f in replayed if f["event"] == ev.CHAT_MESSAGE] == [
        "offline 0",
        "offline 1",
    ]
    # Then live, with nothing repeated.
    await _customer_messages(server, "live", 1)
    assert [f["seq"] for f in await again.events(3)] == [10, 11, 12]
    assert await again.quiet() == []
    again.close()


async def test_since_seq_equal_to_latest_replays_nothing(server: RunningServer, tenant: Tenant) -> None:
    ws = await WsClient.connect(server.base_url, tenant.token)
    first = await ws.subscribe(channel_id=tenant.channel["id"])
    await _customer_messages(server, "x", 1)
    await ws.events(3)
    ws.close()
    again = await WsClient.connect(server.base_url, tenant.token)
    reply = await again.subscribe(channel_id=tenant.channel["id"], since_seq=3, epoch=first["epoch"])
    assert reply["latest_seq"] == 3
    assert await again.quiet() == []
    again.close()


async def test_conversation_resume_replays_only_that_conversation(server: RunningServer, tenant: Tenant) -> None:
    ws = await WsClient.connect(server.base_url, tenant.token)
    first = await ws.subscribe(channel_id=tenant.channel["id"])
    await _customer_messages(server, "a", 1)
    conversation_a = (await ws.events(3))[0]["conversation_id"]
    await server.client.webhook(messaging_body(text_item("b-0", "b 0", sender="6200000000000102")))
    await _customer_messages(server, "a-more", 1)
    await ws.events(6)
    ws.close()
    again = await WsClient.connect(server.base_url, tenant.token)
    await again.subscribe(conversation_id=conversation_a, since_seq=3, epoch=first["epoch"])
    replayed = await again.events(3)
    assert [f["seq"] for f in replayed] == [7, 8, 9]
    assert {f["conversation_id"] for f in replayed} == {conversation_a}
    assert await again.quiet() == []
    again.close()


async def test_wrong_epoch_or_no_epoch_gets_resync_required(server: RunningServer, tenant: Tenant) -> None:
    ws = await WsClient.connect(server.base_url, tenant.token)
    first = await ws.subscribe(channel_id=tenant.channel["id"])
    await _customer_messages(server, "e", 1)
    await ws.events(3)
    for stale in (
        {"since_seq": 1, "epoch": "not-this-epoch"},
        {"since_seq": 1},
        {"since_seq": 99, "epoch": first["epoch"]},
    ):
        await ws.send({"action": "subscribe", "channel_id": tenant.channel["id"], **stale})
        reply = await ws.next_event()
        assert reply["event"] == "subscribed" and reply["latest_seq"] == 3
        resync = await ws.next_event()
        assert resync["event"] == ev.RESYNC_REQUIRED, resync
        assert resync["data"] == {"latest_seq": 3, "epoch": first["epoch"]}
        assert resync["seq"] == 3 and resync["channel_id"] == tenant.channel["id"]
    assert await ws.quiet() == []
    ws.close()


async def test_events_older_than_the_log_keeps_get_resync_required(stores, tmp_path: Path) -> None:
    from tests.support.server import connect_tenant

    server = await start_server(make_settings(stores, tmp_path, ws_log_max_events=10))
    try:
        tenant = await connect_tenant(server.client)
        ws = await WsClient.connect(server.base_url, tenant.token)
        first = await ws.subscribe(channel_id=tenant.channel["id"])
        ws.close()
        # 400 events: the stream keeps ~10 (MAXLEN ~ trims whole nodes of 100 entries).
        burst = [ev.Event(ev.MESSAGE_DELETED, tenant.channel["id"], None, {"message_id": str(i)}) for i in range(400)]
        await server.core.sink.publish(burst)
        again = await WsClient.connect(server.base_url, tenant.token)
        reply = await again.subscribe(channel_id=tenant.channel["id"], since_seq=0, epoch=first["epoch"])
        assert reply["latest_seq"] == 400
        resync = await again.next_event()
        assert resync["event"] == ev.RESYNC_REQUIRED and resync["data"] == {"latest_seq": 400, "epoch": first["epoch"]}
        # A recent position is still served.
        await again.send(
            {"action": "subscribe", "channel_id": tenant.channel["id"], "since_seq": 398, "epoch": first["epoch"]}
        )
        assert (await again.next_event())["event"] == "subscribed"
        assert [f["seq"] for f in await again.events(2)] == [399, 400]
        again.close()
    finally:
        await stop_server(server)


async def test_a_lost_log_gets_a_new_epoch(server: RunningServer, tenant: Tenant) -> None:
    """Redis flushed or replaced: the channel's keys are gone. A live subscriber is told to
    resync; an old position from the previous epoch is never answered with new events."""
    channel_id = tenant.channel["id"]
    live = await WsClient.connect(server.base_url, tenant.token)
    first = await live.subscribe(channel_id=channel_id)
    await _customer_messages(server, "old", 1)
    await live.events(3)

    await server.core.redis.delete(*keys(channel_id))
    await _customer_messages(server, "new", 1)
    resync = await live.next_event()
    assert resync["event"] == ev.RESYNC_REQUIRED
    new_epoch = resync["data"]["epoch"]
    assert new_epoch != first["epoch"] and resync["data"]["latest_seq"] == 0
    assert [f["seq"] for f in await live.events(3)] == [1, 2, 3]

    returning = await WsClient.connect(server.base_url, tenant.token)
    reply = await returning.subscribe(channel_id=channel_id, since_seq=2, epoch=first["epoch"])
    assert reply["epoch"] == new_epoch and reply["latest_seq"] == 3
    stale = await returning.next_event()
    assert stale["event"] == ev.RESYNC_REQUIRED and stale["data"] == {"latest_seq": 3, "epoch": new_epoch}
    assert await returning.quiet() == []
    live.close()
    returning.close()
