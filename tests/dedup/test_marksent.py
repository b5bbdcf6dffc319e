"""``POST /api/v1/messages/mark-sent`` against API.md §2: auth, validation, conversation lookup,
idempotency, the conversation update, events, metrics and Redis marks."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import pytest

from server.app.embedded import free_port
from server.dedup.marks import sent_message_key, sent_mid_key
from server.inbox.events import RecordingSink
from tests.support.dedup import MARK_SENT, conversation_of, mark_sent, new_mid, ok_body, sample, stored_messages
from tests.support.helpers import (
    ACCOUNT_ID,
    ADMIN_TOKEN,
    ALL_SECRETS,
    CUSTOMER_A,
    INTERNAL_TOKEN,
    body_of,
    messaging_body,
    text_item,
)
from tests.support.server import RunningServer, connect_tenant, start_server, stop_server


@pytest.fixture
async def recorded(settings) -> AsyncIterator[tuple[RunningServer, RecordingSink]]:
    sink = RecordingSink()
    running = await start_server(settings, sink=sink)
    yield running, sink
    await stop_server(running)


async def nothing_stored(server) -> None:
    db = server.core.store.db
    assert await db.messages.count_documents({}) == 0
    assert await db.conversations.count_documents({}) == 0
    assert await db.customers.count_documents({}) == 0


def assert_error(response, status: int, code: str) -> dict:
    assert response.code == status, (response.code, response.body)
    body = body_of(response)
    assert body["error"] == code and isinstance(body["message"], str) and body["message"]
    return body


@pytest.mark.parametrize(
    "token",
    [None, "wrong-token-0123456789abcdef", ""],
    ids=["missing", "wrong", "empty"],
)
async def test_missing_or_wrong_token_is_401(server, client, tenant, token) -> None:
    response = await client.post(
        MARK_SENT,
        {"account_id": ACCOUNT_ID, "customer_instagram_id": CUSTOMER_A, "content": "x", "type": "AI"},
        token=token,
    )
    assert_error(response, 401, "unauthorized")
    await nothing_stored(server)
    assert sample(server.core.metrics, "igsync_mark_sent_total", outcome="unauthorized") == 1


async def test_a_token_of_another_kind_is_403(server, client, tenant) -> None:
    for token in (ADMIN_TOKEN, tenant.token):
        response = await mark_sent(client, "x", token=token)
        assert_error(response, 403, "forbidden")
    await nothing_stored(server)


@pytest.mark.parametrize("raw", [b"not json", b"[1, 2]", b"", b'"text"'], ids=["garbage", "array", "empty", "string"])
async def test_a_body_that_is_not_a_json_object_is_400(server, client, tenant, raw) -> None:
    response = await client.request("POST", MARK_SENT, raw=raw, token=INTERNAL_TOKEN)
    assert_error(response, 400, "invalid_json")
    await nothing_stored(server)


BASE = {"account_id": ACCOUNT_ID, "customer_instagram_id": CUSTOMER_A, "content": "hi", "type": "AI"}


async def test_the_business_account_as_customer_is_409_and_nothing_is_stored(server, client, tenant) -> None:
    """A well-formed id that conflicts with the channel as stored: 409, not a field error."""
    response = await client.post(MARK_SENT, {**BASE, "customer_instagram_id": ACCOUNT_ID}, token=INTERNAL_TOKEN)
    assert_error(response, 409, "not_a_customer")
    await nothing_stored(server)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({k: v for k, v in BASE.items() if k != "type"}, "type"),
        ({**BASE, "type": "bot"}, "type"),
        ({**BASE, "content": ""}, "content"),
        ({**BASE, "content": 5}, "content"),
        ({**BASE, "message_type": "hologram"}, "message_type"),
        ({**BASE, "mids": "abc"}, "mids"),
        ({**BASE, "mids": [""]}, "mids"),
        ({**BASE, "client_message_id": ""}, "client_message_id"),
        ({**BASE, "media_url": "ftp://x/y"}, "media_url"),
        ({**BASE, "colour": "red"}, "colour"),
        ({k: v for k, v in BASE.items() if k != "customer_instagram_id"}, "customer_instagram_id"),
        ({"content": "hi", "type": "AI"}, "conversation_id"),
        ({**BASE, "conversation_id": "0123456789abcdef01234567"}, "conversation_id"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
async def test_invalid_fields_are_422_with_fields_and_nothing_is_stored(server, client, tenant, body, field) -> None:
    response = await client.post(MARK_SENT, body, token=INTERNAL_TOKEN)
    error = assert_error(response, 422, "validation_error")
    assert field in error["fields"], error
    if body.get("mids") == [""]:
        assert error["fields"]["mids"] == {"0": ["Length must be between 1 and 512."]}
    await nothing_stored(server)
    assert sample(server.core.metrics, "igsync_mark_sent_total", outcome="invalid") == 1


@pytest.mark.parametrize(
    "target",
    [
        {"conversation_id": "0123456789abcdef01234567"},
        {"conversation_id": "not-an-id"},
        {"account_id": "17841499999999999", "customer_instagram_id": CUSTOMER_A},
    ],
    ids=["unknown-conversation", "malformed-conversation", "unknown-account"],
)
async def test_unknown_conversation_or_channel_is_404(server, client, tenant, target) -> None:
    response = await client.post(MARK_SENT, {"content": "x", "type": "AI", **target}, token=INTERNAL_TOKEN)
    assert_error(response, 404, "not_found")
    await nothing_stored(server)
    assert sample(server.core.metrics, "igsync_mark_sent_total", outcome="not_found") == 1


async def test_a_disconnected_channel_is_404(server, client, tenant) -> None:
    response = await client.request("DELETE", f"/api/v1/channels/{tenant.channel['id']}", token=ADMIN_TOKEN)
    assert response.code == 200
    assert_error(await mark_sent(client, "x"), 404, "not_found")
    await nothing_stored(server)


async def test_mark_sent_answers_the_customer_and_publishes_events(recorded) -> None:
    running, sink = recorded
    client = running.client
    await connect_tenant(client)
    ok_body(await client.webhook(messaging_body(text_item(new_mid("q1"), "Where is my order?"))))
    ok_body(await client.webhook(messaging_body(text_item(new_mid("q2"), "Hello??"))))
    conversation = await conversation_of(running.core.store.db)
    assert conversation["status"] == "needs_reply" and conversation["unread_count"] == 2
    sink.events.clear()

    response = await client.post(
        MARK_SENT,
        {"conversation_id": str(conversation["_id"]), "content": "It ships today.", "type": "support"},
        token=INTERNAL_TOKEN,
    )
    assert response.code == 201
    body = body_of(response)
    assert body["status"] == "success" and body["adopted"] is False
    message = body["message"]
    assert message["type"] == "support" and message["source"] == "app" and message["is_ai_response"] is False
    assert message["conversation_id"] == str(conversation["_id"]) and message["content"] == "It ships today."
    assert message["customer"] == str(conversation["customer_id"])

    after = await conversation_of(running.core.store.db)
    assert after["status"] == "answered" and after["unread_count"] == 0
    assert after["last_message"]["id"] == after["recent_message_ids"][-1]
    customer_messages = [m for m in await stored_messages(running.core.store.db) if m["type"] == "customer"]
    assert [m["is_answered"] for m in customer_messages] == [True, True]

    names = [e.name for e in sink.events]
    assert names == ["chat_message", "conversation_updated"]
    assert sink.events[0].data["external_send_result"] == {"success": True, "source": "app"}
    assert sink.events[0].data["message"]["id"] == message["id"]
    assert sink.events[1].data["conversation"]["status"] == "answered"


async def test_mark_sent_creates_the_thread_when_it_predates_igsync(server, client, tenant) -> None:
    response = await mark_sent(client, "Welcome back!", customer="6200000000000777")
    assert response.code == 201
    conversation = await conversation_of(server.core.store.db, "6200000000000777")
    assert conversation is not None and conversation["status"] == "answered"
    assert await server.core.store.db.customers.count_documents({"instagram_id": "6200000000000777"}) == 1
    # Found by the Instagram user id of the channel as well as by the page id.
    await connect_tenant(client, instagram_user_id="17841400000000999")
    again = await mark_sent(client, "second", customer="6200000000000777", account_id="17841400000000999")
    assert again.code == 201
    assert len(await stored_messages(server.core.store.db, "6200000000000777")) == 2


async def test_client_message_id_makes_retries_idempotent(server, client, tenant) -> None:
    first = await mark_sent(client, "Order #42 confirmed", client_message_id="app-42")
    assert first.code == 201
    again = await mark_sent(client, "Order #42 confirmed", client_message_id="app-42")
    assert again.code == 200
    assert body_of(again)["message"] == body_of(first)["message"]
    assert len(await stored_messages(server.core.store.db)) == 1
    metrics = server.core.metrics
    assert sample(metrics, "igsync_mark_sent_total", outcome="created") == 1
    assert sample(metrics, "igsync_mark_sent_total", outcome="idempotent") == 1


async def test_concurrent_retries_with_one_client_message_id_store_one_message(server, client, tenant) -> None:
    responses = await asyncio.gather(*[mark_sent(client, "same call", client_message_id="retry-1") for _ in range(6)])
    assert sorted(r.code for r in responses) == [200, 200, 200, 200, 200, 201]
    assert len({body_of(r)["message"]["id"] for r in responses}) == 1
    [message] = await stored_messages(server.core.store.db)
    conversation = await conversation_of(server.core.store.db)
    assert conversation["recent_message_ids"] == [message["_id"]]
    # Its one echo is absorbed; the Redis counter counted the send once.
    assert await server.core.redis.get(sent_message_key(conversation["_id"], "same call")) == b"1"


async def test_the_same_mids_reported_twice_are_one_message(server, client, tenant) -> None:
    mid = new_mid()
    assert (await mark_sent(client, "dup report", mids=[mid])).code == 201
    again = await mark_sent(client, "dup report", mids=[mid])
    assert again.code == 200 and body_of(again)["adopted"] is False
    assert len(await stored_messages(server.core.store.db)) == 1


async def test_media_and_mids_are_recorded_and_marked(server, client, tenant) -> None:
    mids = [new_mid("a"), new_mid("b")]
    response = await mark_sent(
        client,
        "",
        type="support",
        message_type="image",
        media_url="https://cdn.example.com/a.jpg",
        mids=mids,
    )
    assert response.code == 201
    message = body_of(response)["message"]
    assert message["message_type"] == "image" and message["media_url"] == "https://cdn.example.com/a.jpg"
    assert message["mid"] == mids[0]
    [stored] = await stored_messages(server.core.store.db)
    assert stored["mids"] == mids
    for mid in mids:
        ttl = await server.core.redis.ttl(sent_mid_key(mid))
        assert 0 < ttl <= server.core.settings.dedup_ttl_secs


async def test_metrics_endpoint_exposes_mark_sent_and_duplicates(server, client, tenant) -> None:
    ok_body(await mark_sent(client, "metric me"))
    text = (await client.get("/metrics")).body.decode()
    assert 'igsync_mark_sent_total{outcome="created"} 1.0' in text
    for layer in ("mid", "cache", "database", "adopted"):
        assert f'igsync_duplicates_total{{layer="{layer}"}}' in text
    assert "igsync_echo_delay_seconds_bucket" in text


async def test_no_secret_or_content_reaches_the_logs(server, client, tenant, caplog) -> None:
    # Production's levels: INFO, with igsync's own loggers fully on.
    caplog.set_level(logging.INFO)
    caplog.set_level(logging.DEBUG, logger="igsync")
    ok_body(await mark_sent(client, "private words 123"))
    await mark_sent(client, "x", token="wrong-token-0123456789abcdef")
    text = caplog.text
    assert "mark-sent: created" in text
    for secret in (*ALL_SECRETS, tenant.token, "private words 123"):
        assert secret not in text


async def test_mongodb_down_is_503_and_retryable(settings) -> None:
    dead = settings.replace(mongo_url=f"mongodb://127.0.0.1:{free_port()}/?retryWrites=false&directConnection=true")
    running = await start_server(dead, ensure_indexes=False)
    try:
        response = await mark_sent(running.client, "lost?")
        assert_error(response, 503, "store_unavailable")
        assert sample(running.core.metrics, "igsync_mark_sent_total", outcome="error") == 1
    finally:
        await stop_server(running, drop=False)
