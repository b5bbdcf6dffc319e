"""API.md §3 and §6 over real HTTP: admin writes, inbox reads, pagination, owner scoping, auth kinds."""

from __future__ import annotations

import asyncio

import pytest

from tests.support.helpers import (
    ACCOUNT_ID,
    ADMIN_TOKEN,
    INTERNAL_TOKEN,
    Client,
    body_of,
    messaging_body,
    text_item,
)
from tests.support.realtime import WsClient
from tests.support.server import RunningServer, Tenant, connect_tenant

OTHER_ACCOUNT = "17841499999999999"


async def post_texts(
    client: Client,
    customer: str,
    count: int,
    *,
    account: str = ACCOUNT_ID,
    t0: int = 1_763_460_000_000,
    prefix: str = "m",
) -> None:
    for i in range(count):
        item = text_item(
            f"{prefix}.{customer}.{i}", f"{prefix} {i}", sender=customer, recipient=account, timestamp_ms=t0 + i * 1000
        )
        response = await client.webhook(messaging_body(item, account_id=account))
        assert body_of(response)["status"] == "success", response.body


# -- admin -------------------------------------------------------------------------------------


async def test_connect_reconnect_and_disconnect_a_channel(client: Client) -> None:
    body = {
        "page_id": ACCOUNT_ID,
        "username": "shop",
        "owner": {"id": 123, "email": "o@example.com"},
        "access_token": "EAAG-secret-page-token",
    }
    created = await client.post("/api/v1/channels", body, token=ADMIN_TOKEN)
    assert created.code == 201
    channel = body_of(created)["channel"]
    assert set(channel) >= {"id", "page_id", "instagram_user_id", "username", "owner", "is_connect", "created_at"}
    assert channel["is_connect"] is True and channel["owner"] == {"id": 123, "email": "o@example.com"}
    assert "access_token" not in created.body.decode()

    deleted = await client.request("DELETE", f"/api/v1/channels/{channel['id']}", token=ADMIN_TOKEN)
    assert deleted.code == 200 and body_of(deleted)["channel"]["is_connect"] is False

    again = await client.post("/api/v1/channels", {**body, "username": "shop2"}, token=ADMIN_TOKEN)
    assert again.code == 200
    assert body_of(again)["channel"]["id"] == channel["id"]
    assert body_of(again)["channel"]["is_connect"] is True
    assert body_of(again)["channel"]["username"] == "shop2"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"username": "shop", "owner": {"id": 1, "email": "o@example.com"}}, "page_id"),
        ({"page_id": "1", "owner": {"id": 1, "email": "o@example.com"}}, "username"),
        ({"page_id": "1", "username": "shop", "owner": {"id": 1, "email": "not-an-email"}}, "owner"),
        ({"page_id": "1", "username": "shop", "owner": {"id": True, "email": "o@example.com"}}, "owner"),
        ({"page_id": "1", "username": "shop", "owner": {"id": 1, "email": "o@example.com"}, "colour": "red"}, "colour"),
        ({"page_id": "1/../2", "username": "shop", "owner": {"id": 1, "email": "o@example.com"}}, "page_id"),
    ],
)
async def test_invalid_channel_is_422_with_fields(server: RunningServer, body: dict, field: str) -> None:
    response = await server.client.post("/api/v1/channels", body, token=ADMIN_TOKEN)
    assert response.code == 422
    error = body_of(response)
    assert error["error"] == "validation_error" and field in error["fields"]
    assert await server.core.store.db.channels.count_documents({}) == 0


async def test_not_json_is_400(server: RunningServer) -> None:
    response = await server.client.request("POST", "/api/v1/channels", raw=b"{nope", token=ADMIN_TOKEN)
    assert response.code == 400 and body_of(response)["error"] == "invalid_json"
    response = await server.client.post("/api/v1/tokens", [1, 2], token=ADMIN_TOKEN)
    assert response.code == 400


async def test_tokens_are_shown_once_and_stored_hashed(server: RunningServer, tenant: Tenant) -> None:
    stored = await server.core.store.db.tokens.find_one({})
    assert tenant.token not in str(stored)
    assert stored["owner"] == {"id": 1, "email": "owner@example.com"}
    by_id = await server.client.post("/api/v1/tokens", {"owner_id": 1}, token=ADMIN_TOKEN)
    assert by_id.code == 201 and body_of(by_id)["token"] != tenant.token
    unknown = await server.client.post("/api/v1/tokens", {"owner_email": "nobody@example.com"}, token=ADMIN_TOKEN)
    assert unknown.code == 404
    both = await server.client.post("/api/v1/tokens", {"owner_email": "a@b.co", "owner_id": 1}, token=ADMIN_TOKEN)
    assert both.code == 422


@pytest.mark.parametrize("owner_id", [{"$ne": None}, {"$gt": ""}, [1], None, True, "", 1.5, "x" * 65, 2**63])
async def test_an_owner_id_that_is_not_an_id_never_reaches_a_query(
    server: RunningServer, tenant: Tenant, owner_id: object
) -> None:
    """``{"$ne": null}`` would match any owner and issue a token for them: an injection."""
    response = await server.client.post("/api/v1/tokens", {"owner_id": owner_id}, token=ADMIN_TOKEN)
    assert response.code == 422, response.body
    assert "owner_id" in body_of(response)["fields"]
    assert await server.core.store.db.tokens.count_documents({}) == 1  # the tenant's own, no other
    channel = {"page_id": "17841400000000555", "username": "x", "owner": {"id": owner_id, "email": "x@example.com"}}
    assert (await server.client.post("/api/v1/channels", channel, token=ADMIN_TOKEN)).code == 422


# -- auth kinds (API.md §6) -------------------------------------------------------------------


async def test_missing_or_wrong_token_is_401_everywhere(client: Client, tenant: Tenant) -> None:
    for method, path in [
        ("GET", "/api/v1/channels"),
        ("POST", "/api/v1/channels"),
        ("POST", "/api/v1/tokens"),
        ("GET", "/api/v1/conversations"),
        ("DELETE", f"/api/v1/channels/{tenant.channel['id']}"),
    ]:
        for token in (None, "wrong-token", ""):
            response = await client.request(method, path, token=token, body={} if method == "POST" else None)
            assert response.code == 401, (method, path, token)
            assert body_of(response)["error"] == "unauthorized"
    response = await client.get("/api/v1/channels", headers={"Authorization": "Basic " + tenant.token})
    assert response.code == 401


async def test_valid_token_of_the_wrong_kind_is_403(client: Client, tenant: Tenant) -> None:
    assert (await client.post("/api/v1/channels", {}, token=tenant.token)).code == 403
    assert (await client.post("/api/v1/tokens", {}, token=INTERNAL_TOKEN)).code == 403
    assert (await client.get("/api/v1/conversations", token=ADMIN_TOKEN)).code == 403
    response = await client.get("/api/v1/channels", token=INTERNAL_TOKEN)
    assert response.code == 403 and body_of(response)["error"] == "forbidden"


async def test_unknown_path_is_json_404(client: Client) -> None:
    response = await client.get("/api/v1/nothing-here")
    assert response.code == 404 and body_of(response)["error"] == "not_found"


# -- reads and pagination -----------------------------------------------------------------------


async def test_conversations_newest_first_with_cursor_pages(client: Client, tenant: Tenant) -> None:
    customers = [f"62000000001{i:02d}" for i in range(7)]
    for customer in customers:
        await post_texts(client, customer, 1)
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        query = "/api/v1/conversations?limit=3" + (f"&cursor={cursor}" if cursor else "")
        page = body_of(await client.get(query, token=tenant.token))
        seen += [c["customer"]["instagram_id"] for c in page["conversations"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == 3
    assert seen == list(reversed(customers))  # most recently updated first, each once

    # A new message moves a conversation to the top.
    await post_texts(client, customers[0], 1, prefix="again")
    top = body_of(await client.get("/api/v1/conversations?limit=1", token=tenant.token))["conversations"][0]
    assert top["customer"]["instagram_id"] == customers[0]
    assert set(top) == {
        "id",
        "channel_id",
        "customer",
        "source",
        "status",
        "unread_count",
        "last_message",
        "created_at",
        "updated_at",
        "last_customer_message_at",
        "reply_window",
    }
    assert top["reply_window"]["standard_until"] is not None  # the customer wrote: the window is open
    assert set(top["customer"]) == {
        "id",
        "instagram_id",
        "first_name",
        "last_name",
        "username",
        "profile_pic",
        "profile_pic_file",  # our copy of the picture (docs/decisions.md), null until made
        "enhanced_data_fetched",
    }
    assert top["unread_count"] == 2 and top["status"] == "needs_reply"
    assert top["last_message"]["content"] == "again 0"
    assert top["updated_at"].endswith("Z") and len(top["updated_at"]) == 24


async def test_conversations_filters_and_bad_parameters(client: Client, tenant: Tenant) -> None:
    await post_texts(client, "6200000000000201", 1)
    all_rows = body_of(await client.get("/api/v1/conversations", token=tenant.token))["conversations"]
    later = all_rows[0]["updated_at"]
    none_after = await client.get("/api/v1/conversations?updated_since=2999-01-01T00:00:00Z", token=tenant.token)
    assert body_of(none_after)["conversations"] == []
    since = await client.get(f"/api/v1/conversations?updated_since={later}", token=tenant.token)
    assert len(body_of(since)["conversations"]) == 1
    by_channel = await client.get(f"/api/v1/conversations?channel_id={tenant.channel['id']}", token=tenant.token)
    assert len(body_of(by_channel)["conversations"]) == 1
    for bad, code in [
        ("limit=0", 422),
        ("limit=abc", 422),
        ("limit=5000", 422),
        ("updated_since=yesterday", 422),
        ("cursor=%%%", 400),
        ("cursor=bm9wZQ", 400),
        ("channel_id=nope", 404),
    ]:
        response = await client.get(f"/api/v1/conversations?{bad}", token=tenant.token)
        assert response.code == code, bad
        assert "error" in body_of(response)


async def test_an_updated_since_outside_utcs_range_means_everything_or_nothing(client: Client, tenant: Tenant) -> None:
    """Valid RFC 3339 times whose instant is before year 1 or after 9999 in UTC (once was a 500)."""
    await post_texts(client, "6200000000000311", 1)
    cases = {"0001-01-01T00:00:00%2B01:00": 1, "9999-12-31T23:59:59-01:00": 0, "2026-01-01t00:00:00z": 1}
    for since, expected in cases.items():
        response = await client.get(f"/api/v1/conversations?updated_since={since}", token=tenant.token)
        assert response.code == 200, since
        assert len(body_of(response)["conversations"]) == expected, since


async def test_messages_pages_oldest_first_with_after_and_before(client: Client, tenant: Tenant) -> None:
    await post_texts(client, "6200000000000301", 7)
    conversation = body_of(await client.get("/api/v1/conversations", token=tenant.token))["conversations"][0]
    base = f"/api/v1/conversations/{conversation['id']}/messages"

    latest = body_of(await client.get(base + "?limit=3", token=tenant.token))
    assert [m["content"] for m in latest["messages"]] == ["m 4", "m 5", "m 6"]
    assert latest["has_more"] is True
    older = body_of(await client.get(base + f"?limit=3&before={latest['messages'][0]['id']}", token=tenant.token))
    assert [m["content"] for m in older["messages"]] == ["m 1", "m 2", "m 3"]
    assert older["has_more"] is True
    oldest = body_of(await client.get(base + f"?limit=3&before={older['messages'][0]['id']}", token=tenant.token))
    assert [m["content"] for m in oldest["messages"]] == ["m 0"] and oldest["has_more"] is False

    newer = body_of(await client.get(base + f"?limit=4&after={oldest['messages'][0]['id']}", token=tenant.token))
    assert [m["content"] for m in newer["messages"]] == ["m 1", "m 2", "m 3", "m 4"] and newer["has_more"] is True
    last = body_of(await client.get(base + f"?limit=4&after={newer['messages'][-1]['id']}", token=tenant.token))
    assert [m["content"] for m in last["messages"]] == ["m 5", "m 6"] and last["has_more"] is False

    message = latest["messages"][-1]
    assert set(message) >= {
        "id",
        "content",
        "type",
        "customer",
        "conversation_id",
        "is_ai_response",
        "is_answered",
        "created_at",
        "feedback",
        "feedback_comment",
        "feedback_at",
        "message_type",
        "media_url",
        "media_file",
        "processing_status",
        "transcription",
        "source",
        "mid",
        "sent_at",
        "reply_to",
        "attachments",
        "reactions",
        "is_deleted",
        "edited_at",
        "read_at",
    }
    assert message["customer"] == conversation["customer"]["id"]
    assert message["source"] == "instagram" and message["type"] == "customer"

    for bad, code in [("?after=nope", 404), ("?before=000000000000000000000000", 404), ("?limit=-1", 422)]:
        assert (await client.get(base + bad, token=tenant.token)).code == code


async def test_mark_read_clears_the_unread_count(client: Client, tenant: Tenant) -> None:
    await post_texts(client, "6200000000000401", 2)
    conversation = body_of(await client.get("/api/v1/conversations", token=tenant.token))["conversations"][0]
    assert conversation["unread_count"] == 2
    other_tab = await WsClient.connect(client.base_url, tenant.token)
    try:
        await other_tab.subscribe(channel_id=tenant.channel["id"])
        read = await client.post(f"/api/v1/conversations/{conversation['id']}/read", token=tenant.token)
        assert body_of(read)["conversation"]["unread_count"] == 0
        # Every other open inbox of the owner learns it at once.
        event = await other_tab.next_event()
        assert event["event"] == "conversation_updated"
        assert event["data"]["conversation"]["id"] == conversation["id"]
        assert event["data"]["conversation"]["unread_count"] == 0
    finally:
        other_tab.close()


# -- tenant isolation on every read endpoint -------------------------------------------------------


async def test_another_owner_sees_nothing_of_ours(client: Client, tenant: Tenant) -> None:
    other = await connect_tenant(
        client, page_id=OTHER_ACCOUNT, owner_id=2, email="other@example.com", username="other_shop"
    )
    await asyncio.gather(
        post_texts(client, "6200000000000501", 2), post_texts(client, "6200000000000502", 1, account=OTHER_ACCOUNT)
    )
    ours = body_of(await client.get("/api/v1/conversations", token=tenant.token))["conversations"]
    theirs = body_of(await client.get("/api/v1/conversations", token=other.token))["conversations"]
    assert [c["customer"]["instagram_id"] for c in ours] == ["6200000000000501"]
    assert [c["customer"]["instagram_id"] for c in theirs] == ["6200000000000502"]
    channels = body_of(await client.get("/api/v1/channels", token=other.token))["channels"]
    assert [c["page_id"] for c in channels] == [OTHER_ACCOUNT]

    conversation_id = ours[0]["id"]
    message_id = body_of(await client.get(f"/api/v1/conversations/{conversation_id}/messages", token=tenant.token))[
        "messages"
    ][0]["id"]
    for path in [
        f"/api/v1/conversations/{conversation_id}",
        f"/api/v1/conversations/{conversation_id}/messages",
        f"/api/v1/conversations?channel_id={tenant.channel['id']}",
    ]:
        response = await client.get(path, token=other.token)
        assert response.code == 404, path
        assert body_of(response)["error"] == "not_found"
    assert (await client.post(f"/api/v1/conversations/{conversation_id}/read", token=other.token)).code == 404
    # Our own message id used as an anchor in their conversation is not found either.
    their_conversation = theirs[0]["id"]
    response = await client.get(
        f"/api/v1/conversations/{their_conversation}/messages?after={message_id}", token=other.token
    )
    assert response.code == 404


async def test_health_and_readiness(client: Client) -> None:
    assert body_of(await client.get("/healthz")) == {"status": "ok"}
    ready = await client.get("/readyz")
    assert ready.code == 200 and body_of(ready)["checks"] == {"mongo": True, "redis": True}


async def test_list_field_errors_are_422_with_string_keys(server: RunningServer) -> None:
    """marshmallow keys list items by position; the JSON error shape needs string keys."""
    from server.api.errors import validation_error

    error = validation_error({"mids": {0: ["Not a valid string."]}})
    assert error.body()["fields"] == {"mids": {"0": ["Not a valid string."]}}
