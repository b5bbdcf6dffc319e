"""Sending through igsync (API.md §2b) against a real server, a real MongoDB/Redis and a fake
Graph API that is a real local HTTP server: stored first, sent once, its echo never a second
message whatever order Instagram's answer and the echo come in."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from bson import ObjectId

from igsync_client import IgsyncClient, IgsyncValidationError
from models.timeutil import utcnow
from server.inbox import events as ev
from server.inbox.events import RecordingSink
from tests.support.events import EventsEnv, events_env
from tests.support.helpers import (
    ACCOUNT_ID,
    ADMIN_TOKEN,
    CUSTOMER_A,
    INTERNAL_TOKEN,
    body_of,
    echo_item,
    messaging_body,
    text_item,
    wait_for,
)
from tests.support.server import start_server, stop_server

SEND_SETTINGS: dict[str, Any] = dict(
    send_retry_base_secs=0.05, send_poll_secs=0.1, send_lease_secs=3.0, graph_api_timeout_secs=2.0
)


@pytest.fixture
async def env(stores: Any, tmp_path: Path) -> AsyncIterator[EventsEnv]:
    async with events_env(stores, tmp_path, **SEND_SETTINGS) as environment:
        yield environment


async def open_conversation(env: EventsEnv, customer: str = CUSTOMER_A) -> str:
    """A customer writes (the window opens); the conversation's id."""
    await env.post(messaging_body(text_item(f"m_in_{customer}_{time.time_ns()}", "hello?", sender=customer)))
    conversation = await env.core.store.conversations.find_by_customer(env.channel_oid, customer)
    return str(conversation["_id"])


async def send(env: EventsEnv, conversation_id: str, body: dict[str, Any], *, token: str | None = None) -> Any:
    return await env.client.post(f"/api/v1/conversations/{conversation_id}/messages", body, token=token or env.token)


async def settled(env: EventsEnv, message_id: str, status: str = "sent") -> dict[str, Any]:
    async def done() -> dict[str, Any] | None:
        doc = await env.core.store.messages.get(ObjectId(message_id))
        return doc if doc and doc.get("delivery_status") == status and "send_due_at" not in doc else None

    return await wait_for(done, timeout=15)


async def messages_of(env: EventsEnv, conversation_id: str) -> list[dict[str, Any]]:
    response = await env.client.get(f"/api/v1/conversations/{conversation_id}/messages", token=env.token)
    assert response.code == 200, response.body
    return body_of(response)["messages"]


def updates_of(env: EventsEnv, message_id: str) -> list[dict[str, Any]]:
    return [e.data for e in env.events(ev.MESSAGE_UPDATED) if e.data["message"]["id"] == message_id]


async def test_a_reply_is_stored_pending_then_sent_and_its_echo_is_a_duplicate(env: EventsEnv) -> None:
    conversation_id = await open_conversation(env)
    response = await send(env, conversation_id, {"content": "Your order shipped today.", "client_message_id": "a-1"})
    assert response.code == 202, response.body
    pending = body_of(response)["message"]
    assert pending["delivery_status"] == "pending" and pending["type"] == "support" and pending["mid"] is None
    chat = [e for e in env.events(ev.CHAT_MESSAGE) if e.data["message"]["id"] == pending["id"]]
    assert chat[0].data["external_send_result"] == {"success": None, "source": "app", "status": "pending"}

    sent = await settled(env, pending["id"])
    [call] = env.graph.sends
    assert call["account_id"] == ACCOUNT_ID and call["body"]["recipient"] == {"id": CUSTOMER_A}
    assert call["body"]["message"] == {"text": "Your order shipped today."}
    assert call["body"]["messaging_type"] == "RESPONSE" and "tag" not in call["body"]
    assert sent["mids"] == [sent["send"]["parts"][0]["mid"]] and sent["mid"]
    assert "delivery_status" in updates_of(env, pending["id"])[-1]["changes"]
    assert updates_of(env, pending["id"])[-1]["message"]["delivery_status"] == "sent"

    echo = await env.post(messaging_body(echo_item(sent["mid"], "Your order shipped today.")))
    assert echo == {"status": "success", "duplicate": True, "layer": "mid"}
    listed = await messages_of(env, conversation_id)
    assert [m["type"] for m in listed] == ["customer", "support"]
    assert listed[1]["delivery_status"] == "sent" and listed[1]["delivery_error"] is None


@pytest.mark.parametrize("when", ["before", "during"])
async def test_an_echo_that_beats_or_races_the_answer_is_never_a_second_message(env: EventsEnv, when: str) -> None:
    conversation_id = await open_conversation(env)
    echoes: list[dict[str, Any]] = []
    racing: list[asyncio.Task[Any]] = []

    async def echo_first(request: dict[str, Any], mid: str) -> None:
        body = messaging_body(echo_item(mid, request["body"]["message"]["text"]))
        if when == "before":  # Instagram's echo reaches igsync before its answer to the sender
            echoes.append(await env.post(body))
        else:
            racing.append(asyncio.create_task(env.post(body)))

    env.graph.on_send = echo_first
    response = await send(env, conversation_id, {"content": "On its way!"})
    message_id = body_of(response)["message"]["id"]
    sent = await settled(env, message_id)
    echoes.extend(await asyncio.gather(*racing))
    assert echoes[0]["status"] == "success" and echoes[0].get("duplicate") is True, echoes
    assert sent["mids"] == [sent["send"]["parts"][0]["mid"]]
    # And its redelivery later: the same message.
    again = await env.post(messaging_body(echo_item(sent["mid"], "On its way!")))
    assert again["layer"] == "mid"
    assert [m["type"] for m in await messages_of(env, conversation_id)] == ["customer", "support"]


async def test_the_same_client_message_id_sends_once(env: EventsEnv) -> None:
    conversation_id = await open_conversation(env)
    first = await send(env, conversation_id, {"content": "Once.", "client_message_id": "same"})
    second = await send(env, conversation_id, {"content": "Once.", "client_message_id": "same"})
    assert (first.code, second.code) == (202, 200)
    assert body_of(first)["message"]["id"] == body_of(second)["message"]["id"]
    await settled(env, body_of(first)["message"]["id"])
    third = await send(env, conversation_id, {"content": "Once.", "client_message_id": "same"})
    assert third.code == 200 and body_of(third)["message"]["delivery_status"] == "sent"
    assert len(env.graph.sends) == 1


async def _customer_wrote(env: EventsEnv, conversation_id: str, ago: dt.timedelta) -> None:
    await env.core.store.conversations.coll.update_one(
        {"_id": ObjectId(conversation_id)}, {"$set": {"last_customer_message_at": utcnow() - ago}}
    )


async def test_the_messaging_window_at_its_edges(env: EventsEnv) -> None:
    conversation_id = await open_conversation(env)
    minute = dt.timedelta(minutes=1)
    day = dt.timedelta(hours=24)

    await _customer_wrote(env, conversation_id, day - minute)  # 23 h 59 m: a normal response, AI too
    ai = await send(env, conversation_id, {"content": "AI in time", "type": "AI"}, token=INTERNAL_TOKEN)
    assert ai.code == 202 and body_of(ai)["message"]["type"] == "AI"
    await settled(env, body_of(ai)["message"]["id"])
    assert env.graph.sends[-1]["body"]["messaging_type"] == "RESPONSE"

    await _customer_wrote(env, conversation_id, day + minute)  # 24 h 1 m
    before = await env.core.store.messages.coll.count_documents({})
    late_ai = await send(env, conversation_id, {"content": "AI too late", "type": "AI"}, token=INTERNAL_TOKEN)
    assert late_ai.code == 422 and body_of(late_ai)["error"] == "outside_messaging_window"
    assert await env.core.store.messages.coll.count_documents({}) == before  # nothing stored
    person = await send(env, conversation_id, {"content": "A person, tagged"})
    assert person.code == 202
    await settled(env, body_of(person)["message"]["id"])
    assert env.graph.sends[-1]["body"]["tag"] == "HUMAN_AGENT"
    assert env.graph.sends[-1]["body"]["messaging_type"] == "MESSAGE_TAG"

    await _customer_wrote(env, conversation_id, 7 * day - minute)  # still a person's
    assert (await send(env, conversation_id, {"content": "day 7"})).code == 202
    await _customer_wrote(env, conversation_id, 7 * day + minute)
    closed = await send(env, conversation_id, {"content": "too late"})
    assert closed.code == 422 and body_of(closed)["error"] == "outside_messaging_window"

    conversation = body_of(await env.client.get(f"/api/v1/conversations/{conversation_id}", token=env.token))
    window = conversation["conversation"]["reply_window"]
    assert window["standard_until"] < window["human_agent_until"]


async def test_a_rate_limit_is_retried_and_a_permanent_error_fails_until_retried(env: EventsEnv) -> None:
    conversation_id = await open_conversation(env)
    env.graph.send_error(4, message="Application request limit reached")
    env.graph.send_error(2, status=500, message="Service temporarily unavailable")
    retried = body_of(await send(env, conversation_id, {"content": "after two tries"}))["message"]
    await settled(env, retried["id"])
    assert len(env.graph.sends) == 3

    env.graph.send_error(551, message="This person isn't available right now.")
    failed = body_of(await send(env, conversation_id, {"content": "to nobody"}))["message"]
    doc = await settled(env, failed["id"], "failed")
    assert doc["delivery_error"] == {"code": 551, "message": "This person isn't available right now."}
    update = updates_of(env, failed["id"])[-1]
    assert update["message"]["delivery_status"] == "failed" and "delivery_error" in update["changes"]

    sent_one = await env.client.post(f"/api/v1/messages/{retried['id']}/retry", token=env.token)
    assert sent_one.code == 409 and body_of(sent_one)["error"] == "not_failed"
    again = await env.client.post(f"/api/v1/messages/{failed['id']}/retry", token=env.token)
    assert again.code == 202
    await settled(env, failed["id"])
    assert len(env.graph.sends) == 5


async def test_an_expired_token_fails_the_send_and_marks_the_channel(env: EventsEnv) -> None:
    conversation_id = await open_conversation(env)
    env.graph.send_error(190, message="Error validating access token")
    failed = body_of(await send(env, conversation_id, {"content": "no token"}))["message"]
    doc = await settled(env, failed["id"], "failed")
    assert doc["delivery_error"]["code"] == 190
    channel = await env.core.store.channels.get(env.channel_oid)
    assert channel["needs_reauth"] is True


async def test_text_and_two_images_are_three_calls_and_an_early_image_echo_is_merged(env: EventsEnv) -> None:
    conversation_id = await open_conversation(env)

    async def image_echo_first(request: dict[str, Any], mid: str) -> None:
        attachment = request["body"]["message"].get("attachment")
        if attachment and request["n"] == 2:  # the first image's echo beats its answer
            item = {
                "sender": {"id": ACCOUNT_ID},
                "recipient": {"id": CUSTOMER_A},
                "timestamp": int(time.time() * 1000),
                "message": {
                    "mid": mid,
                    "is_echo": True,
                    "attachments": [{"type": "image", "payload": attachment["payload"]}],
                },
            }
            await env.post(messaging_body(item))

    env.graph.on_send = image_echo_first
    body = {
        "content": "Here are the two colours:",
        "attachments": [
            {"type": "image", "url": "https://cdn.example.com/red.jpg"},
            {"type": "image", "url": "https://cdn.example.com/blue.jpg"},
        ],
    }
    message = body_of(await send(env, conversation_id, body))["message"]
    assert message["attachments"] == body["attachments"]
    sent = await settled(env, message["id"])
    assert [c["body"]["message"] for c in env.graph.sends] == [
        {"text": "Here are the two colours:"},
        {"attachment": {"type": "image", "payload": {"url": "https://cdn.example.com/red.jpg"}}},
        {"attachment": {"type": "image", "payload": {"url": "https://cdn.example.com/blue.jpg"}}},
    ]
    assert all(p["mid"] for p in sent["send"]["parts"])
    # The early image echo was stored as an Instagram-app message, then merged into the send.
    assert len(env.events(ev.MESSAGE_DELETED)) == 1
    assert [m["type"] for m in await messages_of(env, conversation_id)] == ["customer", "support"]


async def test_a_send_whose_worker_died_is_sent_once_by_another(env: EventsEnv) -> None:
    """The process that stored the message dies holding its lease: another takes it over
    after the lease and Instagram gets it once; a part whose echo already came is not resent."""
    conversation_id = await open_conversation(env)
    await env.core.send_worker.stop()  # this "process" only queues from now on
    queued = body_of(await send(env, conversation_id, {"content": "survives a crash"}))["message"]
    dead = await env.core.store.outbound.claim("dead-worker", lease_secs=0.3)
    assert dead is not None and str(dead["_id"]) == queued["id"]
    # A second message whose part went to Instagram before its worker died: its echo came.
    echoed = body_of(await send(env, conversation_id, {"content": "already on Instagram"}))["message"]
    holder = await env.core.store.outbound.claim("dead-worker-2", lease_secs=0.3)
    assert holder is not None and str(holder["_id"]) == echoed["id"]
    await env.core.store.outbound.part_attempted(holder, 0, utcnow(), lease_secs=0.3)
    echo = await env.post(messaging_body(echo_item("aWdfZAG1echo_of_dead_send", "already on Instagram")))
    assert echo.get("duplicate") is True  # paired with the pending send by its text

    # Another process on the same database (the first one's worker stays stopped).
    other = await start_server(env.core.settings, sink=RecordingSink())
    try:
        first = await settled(env, queued["id"])
        second = await settled(env, echoed["id"])
    finally:
        await stop_server(other, drop=False)
    assert [c["body"]["message"]["text"] for c in env.graph.sends] == ["survives a crash"]
    assert first["send"]["claims"] == 2
    assert second["send"]["parts"][0]["mid"] == "aWdfZAG1echo_of_dead_send"


async def test_who_may_send_what(env: EventsEnv) -> None:
    conversation_id = await open_conversation(env)
    as_ai = await send(env, conversation_id, {"content": "I am a bot", "type": "AI"})
    assert as_ai.code == 403  # an inbox token is a person
    # Another owner: a channel and token of their own, and our conversation is 404 to them.
    await env.client.post(
        "/api/v1/channels",
        {"page_id": "17841400000000999", "username": "other", "owner": {"id": 2, "email": "two@example.com"}},
        token=ADMIN_TOKEN,
    )
    stranger = body_of(await env.client.post("/api/v1/tokens", {"owner_email": "two@example.com"}, token=ADMIN_TOKEN))
    foreign = await send(env, conversation_id, {"content": "not yours"}, token=stranger["token"])
    assert foreign.code == 404
    assert (await send(env, conversation_id, {"content": "x"}, token="nope")).code == 401
    # A channel with no token can never send: refused before anything is stored.
    await env.core.store.channels.coll.update_one({"_id": env.channel_oid}, {"$unset": {"access_token": ""}})
    no_token = await send(env, conversation_id, {"content": "x"})
    assert no_token.code == 409 and body_of(no_token)["error"] == "channel_cannot_send"
    assert (await send(env, conversation_id, {"content": "x"}, token=ADMIN_TOKEN)).code == 403


@pytest.mark.parametrize(
    ("body", "status", "error"),
    [
        ({}, 422, "validation_error"),
        ({"content": "   "}, 422, "validation_error"),
        ({"content": "é" * 501}, 422, "validation_error"),  # 1 002 bytes: over Meta's 1 000
        ({"content": "hi", "colour": "red"}, 422, "validation_error"),
        ({"content": "hi", "attachments": [{"type": "image", "url": "ftp://x/y"}]}, 422, "validation_error"),
        ({"content": "hi", "attachments": [{"type": "sticker", "url": "https://x/y"}]}, 422, "validation_error"),
        ({"content": "hi", "reply_to": "0123456789abcdef01234567"}, 404, "not_found"),
    ],
)
async def test_bad_sends_are_4xx_and_store_nothing(
    env: EventsEnv, body: dict[str, Any], status: int, error: str
) -> None:
    conversation_id = await open_conversation(env)
    before = await env.core.store.messages.coll.count_documents({})
    response = await send(env, conversation_id, body)
    assert response.code == status and body_of(response)["error"] == error, response.body
    assert await env.core.store.messages.coll.count_documents({}) == before
    assert env.graph.sends == []
    raw = await env.client.request(
        "POST", f"/api/v1/conversations/{conversation_id}/messages", raw=b"{not json", token=env.token
    )
    assert raw.code == 400


async def test_the_python_client_sends_idempotently_and_types_the_window_error(env: EventsEnv) -> None:
    conversation_id = await open_conversation(env)
    with IgsyncClient(env.server.base_url, INTERNAL_TOKEN, backoff_secs=0.01) as igsync:
        first = await asyncio.to_thread(igsync.send, conversation_id, "Thanks! On it.", client_message_id="t-1")
        again = await asyncio.to_thread(igsync.send, conversation_id, "Thanks! On it.", client_message_id="t-1")
        assert first.created and first.status_code == 202 and first.delivery_status == "pending"
        assert not again.created and again.id == first.id
        await settled(env, first.id)
        await _customer_wrote(env, conversation_id, dt.timedelta(hours=25))
        with pytest.raises(IgsyncValidationError) as late:
            await asyncio.to_thread(igsync.send, conversation_id, "too late for a bot")
    assert late.value.code == "outside_messaging_window"
    assert len(env.graph.sends) == 1
