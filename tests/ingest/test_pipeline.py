"""API.md §1 against a real server and real stores: handshake, signature, bad input, every fixture,
batches, standby, test payloads, unknown channels, invalid items and mid redeliveries."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from tests.support.helpers import (
    ACCOUNT_ID,
    CUSTOMER_A,
    CUSTOMER_B,
    VERIFY_TOKEN,
    Client,
    body_of,
    fixture_bytes,
    fixture_json,
    messaging_body,
    sign,
    text_item,
)
from tests.support.server import RunningServer, Tenant, connect_tenant


async def count(server: RunningServer, collection: str, query: dict | None = None) -> int:
    await server.core.audit.flush()  # audit copies are written after the answer
    return await server.core.store.db[collection].count_documents(query or {})


async def stored_nothing(server: RunningServer) -> bool:
    for name in ("messages", "customers", "conversations", "webhook_events"):
        if await count(server, name):
            return False
    return True


# -- handshake ------------------------------------------------------------------------------


async def test_handshake_echoes_the_challenge_as_plain_text(client: Client) -> None:
    response = await client.get(
        f"/webhooks/instagram?hub.mode=subscribe&hub.verify_token={VERIFY_TOKEN}&hub.challenge=1158201444"
    )
    assert response.code == 200
    assert response.body == b"1158201444"
    assert response.headers["Content-Type"].startswith("text/plain")


@pytest.mark.parametrize(
    "query",
    [
        "hub.mode=subscribe&hub.verify_token=wrong&hub.challenge=1",
        "hub.mode=unsubscribe&hub.verify_token=" + VERIFY_TOKEN + "&hub.challenge=1",
        "hub.challenge=1",
    ],
)
async def test_handshake_refuses_a_wrong_token_or_mode(client: Client, query: str) -> None:
    response = await client.get("/webhooks/instagram?" + query)
    assert response.code == 403
    body = body_of(response)
    assert body["error"] == "verification_failed"
    assert "message" in body


# -- signature and bad input ----------------------------------------------------------------


@pytest.mark.parametrize(
    "signature",
    [None, "", "sha256=" + "0" * 64, "sha1=abc", "garbage", sign(b"another body")],
)
async def test_bad_signature_is_401_and_stores_nothing(
    server: RunningServer, tenant: Tenant, signature: str | None
) -> None:
    response = await server.client.webhook(fixture_bytes("customer_text"), signature=signature)
    assert response.code == 401
    assert body_of(response) == {"error": "invalid_signature", "message": "Missing or wrong X-Hub-Signature-256."}
    assert await stored_nothing(server)


async def test_signature_is_checked_over_the_exact_bytes(server: RunningServer, tenant: Tenant) -> None:
    raw = fixture_bytes("customer_text")
    reserialized = orjson.dumps(orjson.loads(raw))  # same JSON, other bytes
    response = await server.client.webhook(reserialized, signature=sign(raw))
    assert response.code == 401
    assert await stored_nothing(server)


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"not json", "invalid_json"),
        (b"", "invalid_json"),
        (b'{"object": "page", "entry": []}', "invalid_payload"),
        (b'["instagram"]', "invalid_payload"),
        (b'{"object": "instagram", "entry": {"id": "1"}}', "invalid_payload"),
    ],
)
async def test_bad_body_is_400_and_stores_nothing(
    server: RunningServer, tenant: Tenant, body: bytes, code: str
) -> None:
    response = await server.client.webhook(body)
    assert response.code == 400
    assert body_of(response)["error"] == code
    assert await stored_nothing(server)


async def test_body_over_the_limit_is_413(stores, tmp_path) -> None:
    from tests.support.server import make_settings, start_server, stop_server

    server = await start_server(make_settings(stores, tmp_path, max_body_bytes=2048))
    try:
        await connect_tenant(server.client)
        big = messaging_body(text_item("mid.big", "x" * 4096))
        response = await server.client.webhook(big)
        assert response.code == 413
        assert body_of(response)["error"] == "payload_too_large"
        small = messaging_body(text_item("mid.small", "fits"))
        assert (await server.client.webhook(small)).code == 200
        assert await count(server, "messages") == 1
    finally:
        await stop_server(server)


# -- every fixture that carries a message -----------------------------------------------------

MESSAGE_FIXTURES = [
    # fixture, direction, customer, type, message_type, content
    ("customer_text", "customer_to_owner", CUSTOMER_A, "customer", "text", "Hi! Do you ship to Lisbon?"),
    (
        "owner_echo_text",
        "owner_to_customer",
        CUSTOMER_A,
        "support",
        "text",
        "Hello! Yes, shipping to Portugal takes 3-5 days.",
    ),
    ("customer_image", "customer_to_owner", CUSTOMER_A, "customer", "image", ""),
    ("customer_audio", "customer_to_owner", CUSTOMER_A, "customer", "audio", ""),
    ("customer_video", "customer_to_owner", CUSTOMER_A, "customer", "video", ""),
    ("customer_file", "customer_to_owner", CUSTOMER_A, "customer", "file", ""),
    ("customer_share_post", "customer_to_owner", CUSTOMER_A, "customer", "ig_post", ""),
    ("customer_share_reel", "customer_to_owner", CUSTOMER_A, "customer", "ig_reel", ""),
    ("customer_story_mention", "customer_to_owner", CUSTOMER_B, "customer", "story_mention", ""),
    ("customer_story_reply", "customer_to_owner", CUSTOMER_A, "customer", "story_reply", None),
    ("customer_reply_to_message", "customer_to_owner", CUSTOMER_A, "customer", "text", None),
    ("customer_text_from_ad", "customer_to_owner", None, "customer", "text", None),
    ("postback", "customer_to_owner", CUSTOMER_B, "customer", "postback", None),
    ("quick_reply", "customer_to_owner", CUSTOMER_B, "customer", "quick_reply", None),
    ("referral", "customer_to_owner", None, "customer", "referral", ""),
    ("unsupported", "customer_to_owner", None, "customer", "unsupported", ""),
    ("standby", "customer_to_owner", CUSTOMER_B, "customer", "text", None),
    ("owner_echo_image", "owner_to_customer", CUSTOMER_A, "support", "image", ""),
]


def _first_item(name: str) -> dict:
    entry = fixture_json(name)["entry"][0]
    return (entry.get("messaging") or entry.get("standby"))[0]


@pytest.mark.parametrize(("name", "direction", "customer", "type_", "message_type", "content"), MESSAGE_FIXTURES)
async def test_fixture_is_stored_with_direction_customer_type_and_content(
    server: RunningServer,
    tenant: Tenant,
    name: str,
    direction: str,
    customer: str | None,
    type_: str,
    message_type: str,
    content: str | None,
) -> None:
    item = _first_item(name)
    expected_customer = customer or item["sender"]["id"]
    if content is None:
        content = (item.get("message") or {}).get("text") or (item.get("postback") or {}).get("title") or ""
    response = await server.client.webhook_fixture(name)
    assert response.code == 200, response.body
    body = body_of(response)
    assert body["status"] == "success"
    data = body["data"]
    assert data["message_direction"] == direction
    assert data["customer"]["instagram_id"] == expected_customer
    assert data["message"]["type"] == type_
    assert data["message"]["message_type"] == message_type
    assert data["message"]["content"] == content
    assert data["channel"] == {"username": "shop", "owner": {"id": 1, "email": "owner@example.com"}}

    stored = await server.core.store.db.messages.find_one({})
    assert stored["type"] == type_ and stored["message_type"] == message_type and stored["content"] == content
    assert stored["source"] == ("instagram" if direction == "customer_to_owner" else "instagram_direct")
    assert await count(server, "messages") == 1
    customer_doc = await server.core.store.db.customers.find_one({})
    assert customer_doc["instagram_id"] == expected_customer
    # Media waits for the media worker; everything else is complete at once. Shared posts and
    # reels have a preview, a story reply its story: kept too (docs/events.md).
    has_media = message_type in (
        "image",
        "audio",
        "video",
        "file",
        "story_mention",
        "ig_post",
        "ig_reel",
        "story_reply",
    )
    assert stored["processing_status"] == ("pending" if has_media else "completed")
    if has_media:
        assert stored["media_url"].startswith("https://")


async def test_rich_fields_are_kept_for_the_inbox(server: RunningServer, tenant: Tenant) -> None:
    for name in (
        "customer_story_reply",
        "customer_reply_to_message",
        "postback",
        "quick_reply",
        "referral",
        "customer_share_post",
        "customer_text_from_ad",
    ):
        assert (await server.client.webhook_fixture(name)).code == 200
    by_type = {}
    async for doc in server.core.store.db.messages.find({}):
        by_type.setdefault(doc["message_type"], []).append(doc)
    story = by_type["story_reply"][0]
    assert story["reply_to"]["story"]["id"] and story["reply_to"]["story"]["url"].startswith("https://")
    reply = next(d for d in by_type["text"] if d.get("reply_to"))
    assert reply["reply_to"] == {"mid": fixture_json("owner_echo_text")["entry"][0]["messaging"][0]["message"]["mid"]}
    postback = by_type["postback"][0]["postback"]
    assert postback["payload"] and postback["title"]
    assert by_type["quick_reply"][0]["quick_reply"]["payload"]
    referral = by_type["referral"][0]["referral"]
    assert referral["source"] == "ADS" and referral["ad_id"]
    share = by_type["ig_post"][0]
    assert [a["type"] for a in share["attachments"]] == ["share", "ig_post"]
    from_ad = next(d for d in by_type["text"] if d.get("referral"))
    assert from_ad["referral"]["ad_id"]


# -- batches, standby, test payloads, unknown channels, invalid items --------------------------


async def test_batch_processes_every_entry_and_item_in_order(server: RunningServer, tenant: Tenant) -> None:
    response = await server.client.webhook_fixture("batched_multi")
    assert response.code == 200
    body = body_of(response)
    assert body["status"] == "success"
    results = body["results"]
    assert [r["data"]["message_direction"] for r in results] == [
        "customer_to_owner",
        "owner_to_customer",
        "customer_to_owner",
    ]
    assert [r["data"]["message"]["content"] for r in results] == [
        "Can I pay by MB Way?",
        "Yes, MB Way works at checkout.",
        "Thanks!",
    ]
    assert await count(server, "messages") == 3
    assert await count(server, "conversations") == 2


async def test_dashboard_test_payload_is_acknowledged_not_stored(server: RunningServer, tenant: Tenant) -> None:
    response = await server.client.webhook_fixture("changes_test_payload")
    assert response.code == 200
    assert body_of(response)["event"] == "test"
    assert await count(server, "messages") == 0
    assert await count(server, "webhook_events") == 1


async def test_changes_shaped_item_for_a_connected_channel_is_processed(server: RunningServer, tenant: Tenant) -> None:
    body = orjson.dumps(
        {
            "object": "instagram",
            "entry": [
                {
                    "id": ACCOUNT_ID,
                    "time": 1,
                    "changes": [{"field": "messages", "value": text_item("mid.changes.1", "via changes")}],
                }
            ],
        }
    )
    response = await server.client.webhook(body)
    assert body_of(response)["data"]["message"]["content"] == "via changes"


async def test_unknown_or_disconnected_channel_is_ignored(server: RunningServer, tenant: Tenant) -> None:
    other = messaging_body(text_item("mid.other", "hi", recipient="999"), account_id="999")
    response = await server.client.webhook(other)
    assert response.code == 200
    assert body_of(response) == {"status": "ignored", "reason": "unknown_channel"}

    from tests.support.helpers import ADMIN_TOKEN

    deleted = await server.client.request("DELETE", f"/api/v1/channels/{tenant.channel['id']}", token=ADMIN_TOKEN)
    assert body_of(deleted)["channel"]["is_connect"] is False
    response = await server.client.webhook_fixture("customer_text")
    assert body_of(response) == {"status": "ignored", "reason": "unknown_channel"}
    assert await count(server, "messages") == 0


async def test_channel_is_found_by_instagram_user_id_too(server: RunningServer) -> None:
    await connect_tenant(server.client, page_id="100200300", instagram_user_id=ACCOUNT_ID)
    response = await server.client.webhook_fixture("owner_echo_text")
    assert body_of(response)["data"]["message_direction"] == "owner_to_customer"


async def test_owner_is_recognised_by_sender_id_without_is_echo(server: RunningServer, tenant: Tenant) -> None:
    item = text_item("mid.noecho", "typed in the app", sender=ACCOUNT_ID, recipient=CUSTOMER_A)
    response = await server.client.webhook(messaging_body(item))
    data = body_of(response)["data"]
    assert data["message_direction"] == "owner_to_customer"
    assert data["customer"]["instagram_id"] == CUSTOMER_A
    assert data["message"]["type"] == "support"


@pytest.mark.parametrize(
    "item",
    [
        {"recipient": {"id": ACCOUNT_ID}, "timestamp": 1, "message": {"mid": "m1", "text": "no sender"}},
        {"sender": {"id": CUSTOMER_A}, "timestamp": 1, "message": {"mid": "m2", "text": "no recipient"}},
        {"sender": {"id": CUSTOMER_A}, "recipient": {"id": ACCOUNT_ID}, "timestamp": 1, "message": {"text": "no mid"}},
        {"sender": {"id": CUSTOMER_A}, "recipient": {"id": ACCOUNT_ID}, "timestamp": 1},
        "not an object",
    ],
)
async def test_an_invalid_item_is_skipped_with_a_reason_and_the_rest_is_stored(
    server: RunningServer, tenant: Tenant, item: object
) -> None:
    body = messaging_body(item, text_item("mid.valid", "valid one"))  # type: ignore[arg-type]
    response = await server.client.webhook(body)
    assert response.code == 200
    first, second = body_of(response)["results"]
    assert first["status"] == "error" and first["error"] == "invalid_item" and first["message"]
    assert second["status"] == "success"
    assert await count(server, "messages") == 1


async def test_single_invalid_item_answers_in_its_place(server: RunningServer, tenant: Tenant) -> None:
    body = messaging_body({"sender": {"id": CUSTOMER_A}, "recipient": {"id": ACCOUNT_ID}, "timestamp": 1})
    response = await server.client.webhook(body)
    assert response.code == 200
    assert body_of(response)["error"] == "invalid_item"


# -- idempotency ------------------------------------------------------------------------------


async def test_redelivered_mid_is_a_mid_duplicate(server: RunningServer, tenant: Tenant) -> None:
    first = await server.client.webhook_fixture("customer_text")
    assert body_of(first)["status"] == "success"
    again = await server.client.webhook_fixture("customer_text")
    assert body_of(again) == {"status": "success", "duplicate": True, "layer": "mid"}
    assert await count(server, "messages") == 1
    conversation = await server.core.store.db.conversations.find_one({})
    assert conversation["unread_count"] == 1


async def test_twenty_concurrent_deliveries_store_one_message(server: RunningServer, tenant: Tenant) -> None:
    body = fixture_bytes("customer_text")
    responses = await asyncio.gather(*(server.client.webhook(body) for _ in range(20)))
    bodies = [body_of(r) for r in responses]
    assert all(r.code == 200 for r in responses)
    assert sum(1 for b in bodies if b.get("data")) == 1
    assert sum(1 for b in bodies if b.get("duplicate")) == 19
    assert {b["layer"] for b in bodies if b.get("duplicate")} == {"mid"}
    assert await count(server, "messages") == 1
    assert await count(server, "customers") == 1
    assert await count(server, "conversations") == 1
    conversation = await server.core.store.db.conversations.find_one({})
    assert conversation["unread_count"] == 1


async def test_concurrent_first_messages_of_new_customers_create_each_once(
    server: RunningServer, tenant: Tenant
) -> None:
    bodies = [messaging_body(text_item(f"mid.c{i}", f"hello {i}", sender=f"77000000000{i % 3}")) for i in range(12)]
    responses = await asyncio.gather(*(server.client.webhook(b) for b in bodies))
    assert all(body_of(r)["status"] == "success" for r in responses)
    assert await count(server, "customers") == 3
    assert await count(server, "conversations") == 3
    assert await count(server, "messages") == 12
    unread = [c["unread_count"] async for c in server.core.store.db.conversations.find({})]
    assert sorted(unread) == [4, 4, 4]


# -- conversation bookkeeping ------------------------------------------------------------------


async def test_conversation_status_unread_last_message_and_is_answered(server: RunningServer, tenant: Tenant) -> None:
    t0 = 1_763_460_000_000
    for i in range(2):
        await server.client.webhook(messaging_body(text_item(f"mid.q{i}", f"question {i}", timestamp_ms=t0 + i)))
    conversation = await server.core.store.db.conversations.find_one({})
    assert conversation["status"] == "needs_reply"
    assert conversation["unread_count"] == 2
    assert conversation["last_message"]["content"] == "question 1"

    echo = text_item("mid.a0", "answer", sender=ACCOUNT_ID, recipient=CUSTOMER_A, echo=True, timestamp_ms=t0 + 10)
    await server.client.webhook(messaging_body(echo))
    conversation = await server.core.store.db.conversations.find_one({})
    assert conversation["status"] == "answered"
    assert conversation["unread_count"] == 0
    assert conversation["last_message"]["content"] == "answer"
    assert conversation["last_message"]["type"] == "support"
    answered = [m["is_answered"] async for m in server.core.store.db.messages.find({"type": "customer"})]
    assert answered == [True, True]

    # A late redelivery of an older message does not become the "last message".
    await server.client.webhook(messaging_body(text_item("mid.old", "older", timestamp_ms=t0 - 5)))
    conversation = await server.core.store.db.conversations.find_one({})
    assert conversation["last_message"]["content"] == "answer"
    assert conversation["status"] == "answered"
    late = await server.core.store.db.messages.find_one({"mid": "mid.old"})
    assert late["is_answered"] is False  # it arrived after the answer was given; it is new to the inbox


async def test_every_body_is_kept_for_audit_with_its_results(server: RunningServer, tenant: Tenant) -> None:
    raw = fixture_bytes("batched_multi")
    await server.client.webhook(raw)
    await server.core.audit.flush()
    event = await server.core.store.db.webhook_events.find_one({})
    assert bytes(event["body"]) == raw
    assert event["signature_verified"] is True
    assert event["account_ids"] == [ACCOUNT_ID]
    assert [r["status"] for r in event["results"]] == ["success"] * 3
    info = await server.core.store.db.webhook_events.index_information()
    ttl = next(v for v in info.values() if "expireAfterSeconds" in v)
    assert ttl["expireAfterSeconds"] == 7 * 86400


async def test_self_messaging_is_an_invalid_item(server: RunningServer, tenant: Tenant) -> None:
    item = text_item("mid.self", "note to self", sender=ACCOUNT_ID, recipient=ACCOUNT_ID, echo=True)
    response = await server.client.webhook(messaging_body(item))
    assert body_of(response)["error"] == "invalid_item"
    assert await count(server, "messages") == 0


async def test_chunked_body_over_the_limit_is_413(stores, tmp_path) -> None:
    from tornado.httpclient import AsyncHTTPClient, HTTPRequest

    from tests.support.server import make_settings, start_server, stop_server

    server = await start_server(make_settings(stores, tmp_path, max_body_bytes=2048))
    try:
        big = messaging_body(text_item("mid.chunked", "y" * 4096))

        async def produce(write):  # no Content-Length: Tornado sends it chunked
            for i in range(0, len(big), 1000):
                await write(big[i : i + 1000])

        request = HTTPRequest(
            server.base_url + "/webhooks/instagram",
            method="POST",
            body_producer=produce,
            headers={"X-Hub-Signature-256": sign(big)},
        )
        response = await AsyncHTTPClient(force_instance=True).fetch(request, raise_error=False)
        assert response.code == 413
        assert await count(server, "messages") == 0
    finally:
        await stop_server(server)
