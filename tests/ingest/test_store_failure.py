"""MongoDB failing under a webhook: 503 so Meta redelivers, and a redelivery repairs whatever a
half-finished attempt left behind — the message is stored once and counted once."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from bson import ObjectId

from models.timeutil import utcnow
from server.app.embedded import EmbeddedStores
from server.inbox.threads import Thread
from server.ingest.parse import parse_body
from server.ingest.pipeline import CUSTOMER_TO_OWNER, build_message
from tests.support.helpers import body_of, fixture_bytes, fixture_json
from tests.support.server import connect_tenant, make_settings, start_server, stop_server


@pytest.fixture
def own_stores(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedStores]:
    """Stores only this test stops and restarts, so the rest of the session is unaffected."""
    stores = EmbeddedStores(tmp_path_factory.mktemp("own-stores"), lock=False).start()
    yield stores
    stores.stop()


async def test_mongo_down_is_503_and_redelivery_stores_once(own_stores: EmbeddedStores, tmp_path: Path) -> None:
    server = await start_server(make_settings(own_stores, tmp_path, store_timeout_ms=800))
    try:
        await connect_tenant(server.client)
        assert body_of(await server.client.webhook_fixture("customer_text"))["status"] == "success"

        own_stores.stop_mongo()
        failed = await server.client.webhook_fixture("owner_echo_text")
        assert failed.code == 503
        assert body_of(failed)["error"] == "store_unavailable"
        ready = await server.client.get("/readyz")
        assert ready.code == 503 and body_of(ready)["checks"] == {"mongo": False, "redis": True}

        own_stores.start_mongo()  # same port, same data
        again = await server.client.webhook_fixture("owner_echo_text")
        assert again.code == 200 and body_of(again)["status"] == "success"
        again = await server.client.webhook_fixture("owner_echo_text")
        assert body_of(again) == {"status": "success", "duplicate": True, "layer": "mid"}
        db = server.core.store.db
        assert await db.messages.count_documents({}) == 2
        conversation = await db.conversations.find_one({})
        assert conversation["status"] == "answered"
        assert conversation["last_message"]["type"] == "support"
        assert (await server.client.get("/readyz")).code == 200
    finally:
        await stop_server(server)


async def test_redelivery_repairs_a_half_written_attempt(own_stores: EmbeddedStores, tmp_path: Path) -> None:
    """The state a crash leaves between "message inserted" and "conversation updated"."""
    server = await start_server(make_settings(own_stores, tmp_path))
    try:
        await connect_tenant(server.client)
        core = server.core
        item = parse_body(fixture_json("customer_text"))[0]
        channel = await core.store.channels.find_connected_by_account(item.entry_id)
        thread = await core.threads.resolve(channel["_id"], item.sender_id)
        half = build_message(item, channel["_id"], thread, CUSTOMER_TO_OWNER)
        await core.store.messages.insert(half)  # ...and the process died here.
        before = await core.store.conversations.get(thread.conversation_id)
        assert before["last_message"] is None and before["unread_count"] == 0

        response = await server.client.webhook_fixture("customer_text")
        assert body_of(response) == {"status": "success", "duplicate": True, "layer": "mid"}
        after = await core.store.conversations.get(thread.conversation_id)
        assert after["last_message"]["id"] == half["_id"]
        assert after["unread_count"] == 1 and after["status"] == "needs_reply"

        # Once repaired, further redeliveries change nothing.
        await server.client.webhook(fixture_bytes("customer_text"))
        assert (await core.store.conversations.get(thread.conversation_id))["unread_count"] == 1
        assert await core.store.db.messages.count_documents({}) == 1
    finally:
        await stop_server(server)


def test_build_message_fields_match_the_item() -> None:
    item = parse_body(fixture_json("customer_image"))[0]
    thread = Thread(ObjectId(), ObjectId())
    doc = build_message(item, ObjectId(), thread, CUSTOMER_TO_OWNER)
    assert doc["mids"] == [item.mid]
    assert doc["processing_status"] == "pending"
    assert doc["media_url"] == item.attachments[0]["url"]
    assert doc["sent_at"] <= utcnow()
