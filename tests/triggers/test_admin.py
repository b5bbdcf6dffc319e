"""Admin surface of triggers: ``triggers``/``ai_enabled`` on ``POST /api/v1/channels`` (the
secret write-only), ``GET /api/v1/triggers/dead`` and ``igsync triggers list-dead|retry``."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from config import Settings
from tests.fakes.receiver import TRIGGER_SECRET, TriggerReceiver
from tests.support.fixtures_triggers import cli
from tests.support.helpers import ADMIN_TOKEN, body_of, wait_for
from tests.support.server import RunningServer, connect_tenant
from tests.support.triggers import MessageSender, connect_with_triggers, http_triggers


async def refusing_receiver(payload: dict[str, Any], attempt: int) -> tuple[int, dict[str, str]]:
    return 400, {}


async def test_the_secret_is_write_only_and_never_logged(
    igsync: RunningServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="igsync")
    caplog.set_level(logging.DEBUG, logger="tornado")

    async def fails_once(payload: dict[str, Any], attempt: int) -> tuple[int, dict[str, str]]:
        return (500, {}) if attempt == 1 else (200, {})

    receiver = TriggerReceiver(behaviour=fails_once).start()
    try:
        response = await igsync.client.post(
            "/api/v1/channels",
            {
                "page_id": "17841400000000001",
                "username": "shop",
                "owner": {"id": 1, "email": "owner@example.com"},
                "triggers": http_triggers(receiver.url),
            },
            token=ADMIN_TOKEN,
        )
        assert response.code == 201
        assert TRIGGER_SECRET.encode() not in response.body
        channel = body_of(response)["channel"]
        assert channel["ai_enabled"] is True
        assert channel["triggers"] == {
            "http": {"url": receiver.url, "timeout_secs": 10.0, "max_attempts": None, "secret_set": True},
            "redis_stream": False,
        }
        tenant = await connect_tenant(igsync.client)  # re-posts the channel without triggers: they stay
        listed = await igsync.client.get("/api/v1/channels", token=tenant.token)
        assert TRIGGER_SECRET.encode() not in listed.body
        assert body_of(listed)["channels"][0]["triggers"]["http"]["secret_set"] is True

        await MessageSender(igsync.client).send("hello")
        await wait_for(lambda: "trigger delivered" in caplog.text)  # logged once igsync has the answer
    finally:
        await receiver.stop()
    assert "trigger will be retried" in caplog.text
    assert TRIGGER_SECRET not in caplog.text


async def test_the_url_is_shown_without_credentials(igsync: RunningServer) -> None:
    channel = await connect_with_triggers(
        igsync.client, http_triggers("http://user:hunter2@127.0.0.1:9/hook?token=abc123", timeout_secs=2)
    )
    assert channel["triggers"]["http"]["url"] == "http://127.0.0.1:9/hook"
    assert channel["triggers"]["http"]["timeout_secs"] == 2


@pytest.mark.parametrize(
    ("triggers", "field_path"),
    [
        ({"http": {"url": "ftp://example.com/x", "secret": TRIGGER_SECRET}}, ("http", "url")),
        ({"http": {"url": "not a url", "secret": TRIGGER_SECRET}}, ("http", "url")),
        ({"http": {"url": "http://127.0.0.1/h", "secret": "short"}}, ("http", "secret")),
        ({"http": {"url": "http://127.0.0.1/h"}}, ("http", "secret")),
        (
            {"http": {"url": "http://127.0.0.1/h", "secret": TRIGGER_SECRET, "timeout_secs": 0}},
            ("http", "timeout_secs"),
        ),
        (
            {"http": {"url": "http://127.0.0.1/h", "secret": TRIGGER_SECRET, "max_attempts": 0}},
            ("http", "max_attempts"),
        ),
        ({"http": {"url": "http://127.0.0.1/h", "secret": TRIGGER_SECRET, "retries": 3}}, ("http", "retries")),
        ({"redis_stream": "yes please"}, ("redis_stream",)),
        ({"webhook": "http://127.0.0.1/h"}, ("webhook",)),
        ("http://127.0.0.1/h", ()),
    ],
)
async def test_invalid_triggers_are_422_and_nothing_is_stored(
    igsync: RunningServer, triggers: Any, field_path: tuple[str, ...]
) -> None:
    response = await igsync.client.post(
        "/api/v1/channels",
        {
            "page_id": "17841400000000001",
            "username": "shop",
            "owner": {"id": 1, "email": "o@example.com"},
            "triggers": triggers,
        },
        token=ADMIN_TOKEN,
    )
    assert response.code == 422, response.body
    error = body_of(response)
    assert error["error"] == "validation_error"
    node = error["fields"]["triggers"]
    for key in field_path:
        node = node[key]
    assert node
    assert TRIGGER_SECRET.encode() not in response.body
    assert await igsync.core.store.channels.list() == []


async def test_ai_enabled_must_be_a_boolean(igsync: RunningServer) -> None:
    response = await igsync.client.post(
        "/api/v1/channels",
        {
            "page_id": "17841400000000001",
            "username": "shop",
            "owner": {"id": 1, "email": "o@example.com"},
            "ai_enabled": "maybe",
        },
        token=ADMIN_TOKEN,
    )
    assert response.code == 422
    assert "ai_enabled" in body_of(response)["fields"]


async def test_reposting_changes_triggers_and_null_turns_them_off(igsync: RunningServer) -> None:
    channel = await connect_with_triggers(igsync.client, {"redis_stream": True}, ai_enabled=False)
    assert channel["triggers"] == {"http": None, "redis_stream": True}
    assert channel["ai_enabled"] is False
    channel = await connect_with_triggers(igsync.client, None)
    assert channel["triggers"] == {"http": None, "redis_stream": False}
    assert channel["ai_enabled"] is False, "ai_enabled is kept when a re-post leaves it out"


async def make_dead(server: RunningServer, receiver: TriggerReceiver, count: int) -> list[str]:
    """``count`` dead letters: the receiver refuses every delivery with a 400."""
    receiver.behaviour = refusing_receiver
    await connect_with_triggers(server.client, http_triggers(receiver.url))
    sender = MessageSender(server.client)
    for i in range(count):
        await sender.send(f"dead {i}")

    async def all_dead() -> list[dict[str, Any]]:
        docs = await server.core.store.trigger_jobs.coll.find({"state": "dead"}).to_list(None)
        return docs if len(docs) == count else []

    return [str(d["_id"]) for d in await wait_for(all_dead)]


async def test_dead_letters_are_listed_newest_first_page_by_page(igsync: RunningServer) -> None:
    receiver = TriggerReceiver().start()
    try:
        ids = await make_dead(igsync, receiver, 5)
    finally:
        await receiver.stop()
    seen: list[dict[str, Any]] = []
    cursor = None
    pages = 0
    while True:
        path = "/api/v1/triggers/dead?limit=2" + (f"&cursor={cursor}" if cursor else "")
        response = await igsync.client.get(path, token=ADMIN_TOKEN)
        assert response.code == 200
        page = body_of(response)
        seen.extend(page["deliveries"])
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == 3
    assert sorted(d["delivery_id"] for d in seen) == sorted(ids)
    dead_at = [(d["dead_at"], d["delivery_id"]) for d in seen]
    assert dead_at == sorted(dead_at, reverse=True)
    assert [d["attempts"] for d in seen] == [1] * 5

    channel_id = seen[0]["channel_id"]
    response = await igsync.client.get(f"/api/v1/triggers/dead?channel_id={channel_id}", token=ADMIN_TOKEN)
    assert len(body_of(response)["deliveries"]) == 5


async def test_dead_letters_endpoint_checks_token_and_input(igsync: RunningServer) -> None:
    tenant = await connect_tenant(igsync.client)
    assert (await igsync.client.get("/api/v1/triggers/dead")).code == 401
    assert (await igsync.client.get("/api/v1/triggers/dead", token="wrong-token-0123456789")).code == 401
    forbidden = await igsync.client.get("/api/v1/triggers/dead", token=tenant.token)
    assert forbidden.code == 403
    assert body_of(forbidden)["error"] == "forbidden"
    bad_cursor = await igsync.client.get("/api/v1/triggers/dead?cursor=nonsense", token=ADMIN_TOKEN)
    assert bad_cursor.code == 400
    assert body_of(bad_cursor)["error"] == "invalid_cursor"
    bad_limit = await igsync.client.get("/api/v1/triggers/dead?limit=0", token=ADMIN_TOKEN)
    assert bad_limit.code == 422
    assert "limit" in body_of(bad_limit)["fields"]
    unknown = await igsync.client.get("/api/v1/triggers/dead?channel_id=000000000000000000000000", token=ADMIN_TOKEN)
    assert unknown.code == 404
    empty = await igsync.client.get("/api/v1/triggers/dead", token=ADMIN_TOKEN)
    assert body_of(empty) == {"deliveries": [], "next_cursor": None}


async def test_cli_lists_and_retries_dead_letters(igsync: RunningServer, trigger_settings: Settings) -> None:
    receiver = TriggerReceiver().start()
    try:
        ids = await make_dead(igsync, receiver, 3)
        code, listed, _ = await cli(trigger_settings, "triggers", "list-dead")
        assert code == 0
        api = body_of(await igsync.client.get("/api/v1/triggers/dead", token=ADMIN_TOKEN))
        assert listed == api

        code, result, _ = await cli(trigger_settings, "triggers", "retry")
        assert code == 2, "neither --all nor ids"
        code, result, _ = await cli(trigger_settings, "triggers", "retry", "000000000000000000000000", "junk")
        assert code == 1
        assert result == {"retried": 0, "not_found": ["000000000000000000000000", "junk"], "not_dead": []}

        async def accepts(payload: dict[str, Any], attempt: int) -> tuple[int, dict[str, str]]:
            return 200, {}

        receiver.behaviour = accepts
        code, result, _ = await cli(trigger_settings, "triggers", "retry", "--all")
        assert code == 0
        assert result["retried"] == 3

        async def delivered() -> bool:
            count = await igsync.core.store.trigger_jobs.coll.count_documents({"state": "delivered"})
            return count == 3

        await wait_for(delivered)
        assert sorted(receiver.ack_counts()) == sorted(ids)
        code, result, _ = await cli(trigger_settings, "triggers", "retry", ids[0])
        assert code == 1
        assert result["not_dead"] == [{"delivery_id": ids[0], "state": "delivered"}]
    finally:
        await receiver.stop()


async def test_dead_letters_that_died_in_the_same_millisecond_page_exactly_once(igsync: RunningServer) -> None:
    from bson import ObjectId

    from models.timeutil import utcnow

    at = utcnow()
    channel = await connect_with_triggers(igsync.client, {"redis_stream": True})
    conversation_id = ObjectId()
    docs = [
        {
            "_id": ObjectId(),
            "lane": f"{conversation_id}:redis_stream",
            "target": "redis_stream",
            "message_id": ObjectId(),
            "conversation_id": conversation_id,
            "channel_id": ObjectId(channel["id"]),
            "state": "dead",
            "attempts": 8,
            "created_at": at,
            "dead_at": at,
            "last_error": {"result": "redis_error", "status": None, "detail": "ConnectionError", "at": at},
        }
        for _ in range(45)
    ]
    await igsync.core.store.trigger_jobs.coll.insert_many(docs)
    seen: list[str] = []
    cursor = None
    while True:
        path = "/api/v1/triggers/dead?limit=7" + (f"&cursor={cursor}" if cursor else "")
        page = body_of(await igsync.client.get(path, token=ADMIN_TOKEN))
        seen.extend(d["delivery_id"] for d in page["deliveries"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert sorted(seen) == sorted(str(d["_id"]) for d in docs)
    assert len(seen) == len(set(seen))
