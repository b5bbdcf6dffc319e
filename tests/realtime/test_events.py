"""Each inbox event over a real WebSocket from a real server: shapes, seq, subscriptions."""

from __future__ import annotations

from typing import Any

from bson import ObjectId

from models.serializers import CONVERSATION_FIELDS, CUSTOMER_FIELDS, WS_MESSAGE_FIELDS
from server.inbox import events as ev
from tests.support.helpers import ACCOUNT_ID, CUSTOMER_A, body_of, echo_item, messaging_body, text_item
from tests.support.realtime import WsClient
from tests.support.server import RunningServer, Tenant, connect_tenant

ENVELOPE_KEYS = {"event", "seq", "channel_id", "conversation_id", "ts", "data"}


def assert_ws_message(message: dict[str, Any]) -> None:
    assert set(WS_MESSAGE_FIELDS) <= set(message), set(WS_MESSAGE_FIELDS) - set(message)
    assert message["created_at"].endswith("Z") and len(message["created_at"]) == 24


def assert_conversation(conversation: dict[str, Any], channel_id: str) -> None:
    assert set(conversation) == set(CONVERSATION_FIELDS)
    assert conversation["channel_id"] == channel_id
    assert set(conversation["customer"]) == set(CUSTOMER_FIELDS)
    assert set(conversation["last_message"]) == {"id", "content", "type", "message_type", "created_at"}


async def test_customer_message_events_have_the_api_shapes(server: RunningServer, tenant: Tenant) -> None:
    ws = await WsClient.connect(server.base_url, tenant.token)
    channel_id = tenant.channel["id"]
    reply = await ws.subscribe(channel_id=channel_id)
    assert reply["channel_id"] == channel_id and reply["latest_seq"] == 0 and isinstance(reply["epoch"], str)

    response = await server.client.webhook_fixture("customer_text")
    assert response.code == 200
    data = body_of(response)["data"]
    chat, new_customer, updated = await ws.events(3)

    for event in (chat, new_customer, updated):
        assert set(event) == ENVELOPE_KEYS
        assert event["channel_id"] == channel_id
        assert event["conversation_id"] == data["conversation"]["id"]
        assert event["ts"].endswith("Z")
    assert [chat["seq"], new_customer["seq"], updated["seq"]] == [1, 2, 3]
    assert chat["event"] == ev.CHAT_MESSAGE
    assert set(chat["data"]) == {"message"}  # no external_send_result for a customer's message
    message = chat["data"]["message"]
    assert_ws_message(message)
    assert message["id"] == data["message"]["id"]
    assert message["content"] == "Hi! Do you ship to Lisbon?"
    assert message["type"] == "customer" and message["source"] == "instagram"
    assert new_customer["event"] == ev.NEW_CUSTOMER_MESSAGE
    assert new_customer["data"]["message"] == message
    assert_conversation(new_customer["data"]["conversation"], channel_id)
    assert new_customer["data"]["conversation"]["customer"]["instagram_id"] == CUSTOMER_A
    assert updated["event"] == ev.CONVERSATION_UPDATED
    assert_conversation(updated["data"]["conversation"], channel_id)
    assert updated["data"]["conversation"]["last_message"]["id"] == message["id"]
    assert updated["data"]["conversation"]["status"] == "needs_reply"
    assert await ws.quiet() == []
    ws.close()


async def test_owner_echo_from_the_instagram_app(server: RunningServer, tenant: Tenant) -> None:
    ws = await WsClient.connect(server.base_url, tenant.token)
    await ws.subscribe(channel_id=tenant.channel["id"])
    await server.client.webhook_fixture("customer_text")
    await ws.events(3)
    response = await server.client.webhook_fixture("owner_echo_text")
    assert response.code == 200 and body_of(response)["data"]["message_direction"] == "owner_to_customer"

    chat, notification, updated = await ws.events(3)
    assert [chat["seq"], notification["seq"], updated["seq"]] == [4, 5, 6]
    assert chat["event"] == ev.CHAT_MESSAGE
    assert chat["data"]["external_send_result"] == {"success": True, "source": "instagram_direct"}
    assert_ws_message(chat["data"]["message"])
    assert chat["data"]["message"]["source"] == "instagram_direct"
    assert chat["data"]["message"]["type"] == "support"
    assert notification["event"] == ev.OWNER_MESSAGE_NOTIFICATION
    assert notification["data"]["message"] == chat["data"]["message"]
    assert_conversation(notification["data"]["conversation"], tenant.channel["id"])
    assert updated["event"] == ev.CONVERSATION_UPDATED
    assert updated["data"]["conversation"]["status"] == "answered"
    ws.close()


async def test_outbound_from_the_app_says_source_app(server: RunningServer, tenant: Tenant) -> None:
    """An AI/support message recorded by our own senders (not the Instagram app)."""
    ws = await WsClient.connect(server.base_url, tenant.token)
    await ws.subscribe(channel_id=tenant.channel["id"])
    await server.client.webhook_fixture("customer_text")
    _, _, updated = await ws.events(3)
    conversation_id = updated["conversation_id"]
    message = {
        **_outbound_doc(updated),
        "type": "AI",
        "source": "ai",
        "is_ai_response": True,
        "content": "Yes, 3-5 days.",
        "mids": ["app-mid-1"],
        "mid": "app-mid-1",
    }
    await server.core.recorder.record(message, received_at=1.0)
    chat, updated2 = await ws.events(2)
    assert chat["event"] == ev.CHAT_MESSAGE and chat["conversation_id"] == conversation_id
    assert chat["data"]["external_send_result"] == {"success": True, "source": "app"}
    assert chat["data"]["message"]["type"] == "AI"
    assert updated2["event"] == ev.CONVERSATION_UPDATED
    ws.close()


def _outbound_doc(updated: dict[str, Any]) -> dict[str, Any]:
    from bson import ObjectId

    from models.timeutil import utcnow

    conversation = updated["data"]["conversation"]
    now = utcnow()
    return {
        "_id": ObjectId(),
        "channel_id": ObjectId(conversation["channel_id"]),
        "conversation_id": ObjectId(conversation["id"]),
        "customer_id": ObjectId(conversation["customer"]["id"]),
        "message_type": "text",
        "created_at": now,
        "sent_at": now,
        "is_answered": False,
    }


async def test_message_updated_and_deleted_through_the_sink(server: RunningServer, tenant: Tenant) -> None:
    ws = await WsClient.connect(server.base_url, tenant.token)
    await ws.subscribe(channel_id=tenant.channel["id"])
    await server.client.webhook_fixture("customer_text")
    chat, _, _ = await ws.events(3)
    stored = await server.core.store.messages.get(ObjectId(chat["data"]["message"]["id"]))
    assert stored is not None
    await server.core.sink.publish(
        [ev.message_updated({**stored, "content": "edited"}, ["content"]), ev.message_deleted(stored)]
    )
    updated, deleted = await ws.events(2)
    assert updated["event"] == ev.MESSAGE_UPDATED and updated["seq"] == 4
    assert updated["data"]["changes"] == ["content"]
    assert updated["data"]["message"]["content"] == "edited"
    assert_ws_message(updated["data"]["message"])
    assert deleted == {
        "event": ev.MESSAGE_DELETED,
        "seq": 5,
        "channel_id": tenant.channel["id"],
        "conversation_id": chat["conversation_id"],
        "ts": deleted["ts"],
        "data": {"message_id": chat["data"]["message"]["id"]},
    }
    ws.close()


async def test_seq_is_consecutive_over_many_webhooks(server: RunningServer, tenant: Tenant) -> None:
    ws = await WsClient.connect(server.base_url, tenant.token)
    await ws.subscribe(channel_id=tenant.channel["id"])
    for i in range(10):
        body = messaging_body(text_item(f"mid-seq-{i}", f"message {i}"))
        assert (await server.client.webhook(body)).code == 200
    frames = await ws.events(30)
    assert [f["seq"] for f in frames] == list(range(1, 31))
    contents = [f["data"]["message"]["content"] for f in frames if f["event"] == ev.CHAT_MESSAGE]
    assert contents == [f"message {i}" for i in range(10)]
    ws.close()


async def test_conversation_subscription_gets_only_that_conversation(server: RunningServer, tenant: Tenant) -> None:
    ws = await WsClient.connect(server.base_url, tenant.token)
    await server.client.webhook(messaging_body(text_item("mid-conv-a1", "from A")))
    response = await server.client.webhook(
        messaging_body(text_item("mid-conv-b1", "from B", sender="6200000000000102"))
    )
    conversation_b = body_of(response)["data"]["conversation"]["id"]
    reply = await ws.subscribe(conversation_id=conversation_b)
    assert reply["conversation_id"] == conversation_b and reply["latest_seq"] == 6

    await server.client.webhook(messaging_body(text_item("mid-conv-a2", "A again")))
    await server.client.webhook(messaging_body(text_item("mid-conv-b2", "B again", sender="6200000000000102")))
    frames = await ws.events(3)
    assert {f["conversation_id"] for f in frames} == {conversation_b}
    assert [f["seq"] for f in frames] == [10, 11, 12]  # the channel's seq: gaps are other conversations
    assert frames[0]["data"]["message"]["content"] == "B again"
    assert await ws.quiet() == []

    # Following the channel too: each event still arrives once.
    await ws.subscribe(channel_id=tenant.channel["id"])
    await server.client.webhook(messaging_body(text_item("mid-conv-b3", "B thrice", sender="6200000000000102")))
    frames = await ws.events(3)
    assert [f["seq"] for f in frames] == [13, 14, 15]
    assert await ws.quiet() == []

    await ws.send({"action": "unsubscribe", "channel_id": tenant.channel["id"]})
    assert await ws.next_event() == {"event": "unsubscribed", "channel_id": tenant.channel["id"]}
    await ws.send({"action": "unsubscribe", "conversation_id": conversation_b})
    assert await ws.next_event() == {"event": "unsubscribed", "conversation_id": conversation_b}
    await server.client.webhook(messaging_body(text_item("mid-conv-b4", "B four", sender="6200000000000102")))
    assert await ws.quiet() == []
    ws.close()


async def test_tenant_isolation(server: RunningServer, tenant: Tenant) -> None:
    other = await connect_tenant(
        server.client, page_id="17841400000000999", owner_id=2, email="other@example.com", username="other"
    )
    mine = await WsClient.connect(server.base_url, tenant.token)
    theirs = await WsClient.connect(server.base_url, other.token)
    await mine.subscribe(channel_id=tenant.channel["id"])

    # Another owner's channel and conversation are "not found", as for REST.
    await theirs.send({"action": "subscribe", "channel_id": tenant.channel["id"]})
    error = await theirs.next_event()
    assert error["event"] == "error" and error["error"] == "not_found"
    await server.client.webhook_fixture("customer_text")
    chat = (await mine.events(3))[0]
    await theirs.send({"action": "subscribe", "conversation_id": chat["conversation_id"]})
    assert (await theirs.next_event())["error"] == "not_found"
    await theirs.subscribe(channel_id=other.channel["id"])

    # Their traffic never reaches me, mine never reaches them.
    body = messaging_body(
        text_item("mid-other-1", "for other", recipient="17841400000000999"), account_id="17841400000000999"
    )
    assert body_of(await server.client.webhook(body))["status"] == "success"
    theirs_frames = await theirs.events(3)
    assert {f["channel_id"] for f in theirs_frames} == {other.channel["id"]}
    await server.client.webhook(messaging_body(echo_item("mid-mine-2", "mine")))
    assert {f["channel_id"] for f in await mine.events(3)} == {tenant.channel["id"]}
    assert await mine.quiet() == []
    assert await theirs.quiet() == []
    mine.close()
    theirs.close()


async def test_channel_id_account_id_is_not_a_channel(server: RunningServer, tenant: Tenant) -> None:
    ws = await WsClient.connect(server.base_url, tenant.token)
    await ws.send({"action": "subscribe", "channel_id": ACCOUNT_ID})  # an Instagram id, not ours
    assert (await ws.next_event())["error"] == "not_found"
    ws.close()
