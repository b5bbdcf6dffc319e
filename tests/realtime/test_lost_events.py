"""A message's events are never lost between the store and the publish.

The recorder counts a message as applied to its conversation before it publishes; a process
that stops between the two leaves a message with no events, and Meta's redelivery is a mid
duplicate. The redelivery publishes the message's events again under its once key: what
never went out goes out now, what did is not logged twice.
"""

from __future__ import annotations

import time
from typing import Any

from server.inbox import events as ev
from tests.support.dedup import mark_sent, new_mid, ok_body
from tests.support.helpers import ACCOUNT_ID, CUSTOMER_A, echo_item, messaging_body, text_item
from tests.support.realtime import WsClient
from tests.support.server import RunningServer, Tenant

NEW_MESSAGE_EVENTS = [ev.CHAT_MESSAGE, ev.NEW_CUSTOMER_MESSAGE, ev.CONVERSATION_UPDATED]


def _drop_first_publish(server: RunningServer, *, of_changes: bool = False) -> list[list[ev.Event]]:
    """The process "stops" after the conversation update: the first batch of events is never
    handed to the hub (the request still answers, as a stand-in for the lost answer)."""
    publisher: Any = server.core.changes if of_changes else server.core.recorder.publisher
    original = publisher.publish
    dropped: list[list[ev.Event]] = []

    async def publish(events: list[ev.Event]) -> bool:
        if not dropped:
            dropped.append(events)
            return False  # not in the log: nothing tells a redelivery there is nothing to repair
        return await original(events)

    publisher.publish = publish
    return dropped


async def _resumed_from_start(server: RunningServer, tenant: Tenant, epoch: str) -> list[dict[str, Any]]:
    again = await WsClient.connect(server.base_url, tenant.token)
    try:
        await again.subscribe(channel_id=tenant.channel["id"], since_seq=0, epoch=epoch)
        return await again.quiet()
    finally:
        again.close()


async def test_a_message_whose_events_never_went_out_gets_them_from_its_redelivery(
    server: RunningServer, tenant: Tenant
) -> None:
    ws = await WsClient.connect(server.base_url, tenant.token)
    first = await ws.subscribe(channel_id=tenant.channel["id"])
    dropped = _drop_first_publish(server)
    body = messaging_body(text_item(new_mid(), "hello, anyone?"))

    assert (await server.client.webhook(body)).code == 200
    assert [e.name for e in dropped[0]] == NEW_MESSAGE_EVENTS
    assert await ws.quiet() == []  # the gap the redelivery must close

    assert (await server.client.webhook(body)).code == 200  # Meta's redelivery: a mid duplicate
    live = await ws.quiet()
    assert [f["event"] for f in live] == NEW_MESSAGE_EVENTS
    assert live[0]["data"]["message"]["content"] == "hello, anyone?"

    assert (await server.client.webhook(body)).code == 200  # and again: nothing more
    assert await ws.quiet() == []
    resumed = await _resumed_from_start(server, tenant, first["epoch"])
    assert [f["event"] for f in resumed] == NEW_MESSAGE_EVENTS
    assert [f["seq"] for f in resumed] == [1, 2, 3]
    ws.close()


async def test_a_redelivery_after_the_events_went_out_logs_nothing(server: RunningServer, tenant: Tenant) -> None:
    ws = await WsClient.connect(server.base_url, tenant.token)
    first = await ws.subscribe(channel_id=tenant.channel["id"])
    body = messaging_body(text_item(new_mid(), "once"))
    for _ in range(3):
        assert (await server.client.webhook(body)).code == 200
    assert [f["event"] for f in await ws.quiet()] == NEW_MESSAGE_EVENTS
    resumed = await _resumed_from_start(server, tenant, first["epoch"])
    assert [f["seq"] for f in resumed] == [1, 2, 3]
    ws.close()


async def test_a_retried_mark_sent_completes_events_the_first_call_never_published(
    server: RunningServer, tenant: Tenant
) -> None:
    ws = await WsClient.connect(server.base_url, tenant.token)
    first = await ws.subscribe(channel_id=tenant.channel["id"])
    assert (await server.client.webhook(messaging_body(text_item(new_mid(), "question")))).code == 200
    assert len(await ws.quiet()) == 3
    dropped = _drop_first_publish(server)

    created = ok_body(await mark_sent(server.client, "the answer", client_message_id="c-1"))
    assert dropped and dropped[0][0].name == ev.CHAT_MESSAGE
    assert await ws.quiet() == []
    again = ok_body(await mark_sent(server.client, "the answer", client_message_id="c-1"))
    assert again["message"]["id"] == created["message"]["id"]
    live = await ws.quiet()
    assert [f["event"] for f in live] == [ev.CHAT_MESSAGE, ev.CONVERSATION_UPDATED]
    assert live[0]["data"]["message"]["id"] == created["message"]["id"]
    resumed = await _resumed_from_start(server, tenant, first["epoch"])
    assert [f["event"] for f in resumed].count(ev.CHAT_MESSAGE) == 2
    ws.close()


async def test_a_change_whose_event_never_went_out_gets_it_from_its_redelivery(
    server: RunningServer, tenant: Tenant
) -> None:
    """Reaction, edit, unreact and read receipt alike (each leaves a mark the redelivery finds)."""
    ws = await WsClient.connect(server.base_url, tenant.token)
    await ws.subscribe(channel_id=tenant.channel["id"])
    mid, reply_mid = new_mid(), new_mid()
    base = int(time.time() * 1000)
    first = text_item(mid, "nice shoes", timestamp_ms=base - 2)
    assert (await server.client.webhook(messaging_body(first))).code == 200
    reply = echo_item(reply_mid, "thank you!", timestamp_ms=base - 1)
    assert (await server.client.webhook(messaging_body(reply))).code == 200
    assert len(await ws.quiet()) >= 4
    changes = {
        "reaction": {
            "sender": {"id": ACCOUNT_ID},
            "recipient": {"id": CUSTOMER_A},
            "timestamp": base,
            "reaction": {"mid": mid, "action": "react", "reaction": "love", "emoji": "L"},
        },
        "edit": {
            "sender": {"id": CUSTOMER_A},
            "recipient": {"id": ACCOUNT_ID},
            "timestamp": base + 1,
            "message_edit": {"mid": mid, "text": "nice red shoes", "num_edit": 1},
        },
        "unreact": {
            "sender": {"id": ACCOUNT_ID},
            "recipient": {"id": CUSTOMER_A},
            "timestamp": base + 2,
            "reaction": {"mid": mid, "action": "unreact"},
        },
        "read": {
            "sender": {"id": CUSTOMER_A},
            "recipient": {"id": ACCOUNT_ID},
            "timestamp": base + 3,
            "read": {"mid": reply_mid},
        },
    }
    for name, item in changes.items():
        dropped = _drop_first_publish(server, of_changes=True)
        body = messaging_body(item)
        assert (await server.client.webhook(body)).code == 200
        assert dropped and await ws.quiet() == [], name  # applied, but its event was lost
        assert (await server.client.webhook(body)).code == 200  # Meta's redelivery
        [frame] = await ws.quiet()
        assert frame["event"] == ev.MESSAGE_UPDATED, name
        expected = {"read": ("read_at", reply_mid)}.get(name, ("content" if name == "edit" else "reactions", mid))
        assert expected[0] in frame["data"]["changes"], (name, frame)
        assert frame["data"]["message"]["mid"] == expected[1], name
        assert (await server.client.webhook(body)).code == 200  # and again: nothing more
        assert await ws.quiet() == [], name
    ws.close()
