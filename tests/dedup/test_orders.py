"""Echo dedup, one deterministic test per order a send and its echo can meet in: mark-sent and echo in every order,
redeliveries, repeated texts, an old outbound message, Redis flushed or down.

Everything runs against a real igsync (HTTP), real SecantusDB and real Redis; the outcome is
read back from MongoDB.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

import pytest

from config import Settings
from server.app.embedded import EmbeddedStores
from server.dedup.marks import sent_message_key
from server.dedup.marksent import outbound_message
from server.inbox.events import RecordingSink
from server.ingest.pipeline import content_hash
from tests.support.dedup import (
    conversation_of,
    echo,
    mark_sent,
    new_mid,
    ok_body,
    sample,
    stored_messages,
)
from tests.support.helpers import ACCOUNT_ID, CUSTOMER_A, CUSTOMER_B, body_of, messaging_body, text_item
from tests.support.server import RunningServer, connect_tenant, on_single_redis, start_server, stop_server


@pytest.fixture
async def recorded(settings) -> AsyncIterator[tuple[RunningServer, RecordingSink]]:
    """A server whose events land in a list, with the fixtures' account connected."""
    sink = RecordingSink()
    running = await start_server(settings, sink=sink)
    await connect_tenant(running.client)
    yield running, sink
    await stop_server(running)


def assert_duplicate_logged(text: str, layer: str, channel_id: str, mid: str) -> None:
    """Ingest's one line for the item names the layer, the direction, the channel and the mid."""
    lines = [line for line in text.splitlines() if f"duplicate detected via {layer} " in line and f"mid={mid}" in line]
    assert len(lines) == 1, text
    assert "direction=owner_to_customer" in lines[0] and f"channel={channel_id}" in lines[0]


def dup_layer(response) -> str | None:
    body = ok_body(response)
    return body.get("layer") if body.get("duplicate") else None


async def test_mark_sent_then_echo_is_a_cache_duplicate(server, client, tenant, caplog) -> None:
    caplog.set_level(logging.INFO, logger="igsync")
    sent = await mark_sent(client, "Your order shipped.", client_message_id="app-1")
    assert sent.code == 201
    body = body_of(sent)
    assert body["adopted"] is False
    assert body["message"]["type"] == "AI" and body["message"]["source"] == "ai"
    assert body["message"]["is_ai_response"] is True

    mid = new_mid("echo")
    assert dup_layer(await echo(client, mid, "Your order shipped.")) == "cache"
    assert_duplicate_logged(caplog.text, "CACHE", tenant.channel["id"], mid)

    [message] = await stored_messages(server.core.store.db)
    assert str(message["_id"]) == body["message"]["id"]
    assert message["mids"] == [mid], "the absorbed echo's mid is recorded on the outbound message"
    assert message["client_message_id"] == "app-1"
    metrics = server.core.metrics
    assert sample(metrics, "igsync_duplicates_total", layer="cache") == 1
    assert sample(metrics, "igsync_echo_delay_seconds_count") == 1
    # A redelivery of that echo is now a plain mid duplicate.
    assert dup_layer(await echo(client, mid, "Your order shipped.")) == "mid"
    assert len(await stored_messages(server.core.store.db)) == 1


async def test_mark_sent_with_its_mid_then_echo_is_a_mid_duplicate(server, client, tenant, caplog) -> None:
    caplog.set_level(logging.INFO, logger="igsync")
    mid = new_mid("sendapi")
    sent = await mark_sent(client, "Here is the link.", type="support", mids=[mid])
    assert sent.code == 201
    assert body_of(sent)["message"]["source"] == "app"
    assert body_of(sent)["message"]["mid"] == mid

    assert dup_layer(await echo(client, mid, "Here is the link.")) == "mid"
    assert_duplicate_logged(caplog.text, "MID", tenant.channel["id"], mid)
    [message] = await stored_messages(server.core.store.db)
    assert message["mids"] == [mid] and message["type"] == "support"
    assert sample(server.core.metrics, "igsync_duplicates_total", layer="mid") == 1
    assert sample(server.core.metrics, "igsync_echo_delay_seconds_count") == 1


async def test_redis_flushed_then_echo_is_a_database_duplicate(server, client, tenant, caplog) -> None:
    caplog.set_level(logging.INFO, logger="igsync")
    ok_body(await mark_sent(client, "We open at 9."))
    conversation = await conversation_of(server.core.store.db)
    key = sent_message_key(conversation["_id"], "We open at 9.")
    assert await server.core.redis.get(key) == b"1", "mark-sent marks the seed's key"
    assert 0 < await server.core.redis.ttl(key) <= server.core.settings.dedup_ttl_secs
    await server.core.redis.delete(key)

    assert dup_layer(await echo(client, new_mid(), "We open at 9.")) == "database"
    assert "duplicate detected via DATABASE" in caplog.text
    assert len(await stored_messages(server.core.store.db)) == 1
    assert sample(server.core.metrics, "igsync_duplicates_total", layer="database") == 1


async def test_echo_then_mark_sent_adopts_the_stored_echo(recorded) -> None:
    running, sink = recorded
    client = running.client
    mid = new_mid("early")
    first = ok_body(await echo(client, mid, "Thanks for waiting!"))
    assert first["data"]["message"]["type"] == "support", "stored as an Instagram-app message first"
    echo_id = first["data"]["message"]["id"]
    sink.events.clear()

    sent = await mark_sent(client, "Thanks for waiting!", client_message_id="ai-7")
    assert sent.code == 200
    body = body_of(sent)
    assert body["adopted"] is True
    assert body["message"]["id"] == echo_id, "the echo's message became the outbound one"
    assert body["message"]["type"] == "AI" and body["message"]["source"] == "ai"

    [message] = await stored_messages(running.core.store.db)
    assert message["client_message_id"] == "ai-7" and message["mids"] == [mid]
    names = [e.name for e in sink.events]
    assert names == ["message_updated", "conversation_updated"]
    assert {"type", "source", "is_ai_response"} <= set(sink.events[0].data["changes"])
    assert sink.events[1].data["conversation"]["last_message"]["type"] == "AI"
    metrics = running.core.metrics
    assert sample(metrics, "igsync_duplicates_total", layer="adopted") == 1
    assert sample(metrics, "igsync_mark_sent_total", outcome="adopted") == 1
    assert sample(metrics, "igsync_echo_delay_seconds_bucket", le="0.1") == 1, "echo first: delay 0"

    # Its redelivery, and a retry of the mark-sent, change nothing.
    assert dup_layer(await echo(client, mid, "Thanks for waiting!")) == "mid"
    again = await mark_sent(client, "Thanks for waiting!", client_message_id="ai-7")
    assert again.code == 200 and body_of(again)["message"]["id"] == echo_id and body_of(again)["adopted"] is True
    assert len(await stored_messages(running.core.store.db)) == 1


async def test_echo_then_mark_sent_with_mid_adopts(server, client, tenant) -> None:
    mid = new_mid()
    ok_body(await echo(client, mid, "Sure, 10% off."))
    sent = await mark_sent(client, "Sure, 10% off.", type="support", mids=[mid])
    assert sent.code == 200 and body_of(sent)["adopted"] is True
    [message] = await stored_messages(server.core.store.db)
    assert message["type"] == "support" and message["source"] == "app" and message["mids"] == [mid]


async def test_native_echo_redelivered_five_times_concurrently_is_stored_once(server, client, tenant) -> None:
    mid = new_mid("native")
    responses = await asyncio.gather(*[echo(client, mid, "typed in the app") for _ in range(5)])
    layers = sorted(str(dup_layer(r)) for r in responses)
    assert layers == ["None", "mid", "mid", "mid", "mid"]
    [message] = await stored_messages(server.core.store.db)
    assert message["source"] == "instagram_direct" and message["mids"] == [mid]
    conversation = await conversation_of(server.core.store.db)
    assert conversation["recent_message_ids"] == [message["_id"]], "applied to the conversation once"


async def test_echo_of_a_send_redelivered_five_times_concurrently(server, client, tenant) -> None:
    ok_body(await mark_sent(client, "On its way"))
    mid = new_mid()
    responses = await asyncio.gather(*[echo(client, mid, "On its way") for _ in range(5)])
    layers = sorted(str(dup_layer(r)) for r in responses)
    assert layers == ["cache", "mid", "mid", "mid", "mid"]
    [message] = await stored_messages(server.core.store.db)
    assert message["mids"] == [mid] and message["type"] == "AI"


async def test_echo_racing_its_mark_sent_ends_as_one_message(server, client, tenant) -> None:
    """Both at once, many times: whichever wins, one message per send (P2)."""
    for round_ in range(8):
        customer = f"62000000009{round_:05d}"
        mid = new_mid()
        sent, echoed = await asyncio.gather(
            mark_sent(client, "race", customer=customer, client_message_id=f"r{round_}"),
            echo(client, mid, "race", customer=customer),
        )
        assert sent.code in (200, 201), sent.body
        ok_body(echoed)
        [message] = await stored_messages(server.core.store.db, customer)
        assert message["client_message_id"] == f"r{round_}" and message["mids"] == [mid]
        assert message["type"] == "AI"


async def test_two_sends_of_one_text_with_two_echoes(server, client, tenant) -> None:
    ok_body(await mark_sent(client, "ok!", client_message_id="a"))
    ok_body(await mark_sent(client, "ok!", client_message_id="b"))
    first, second = new_mid("1"), new_mid("2")
    assert dup_layer(await echo(client, first, "ok!")) == "cache"
    assert dup_layer(await echo(client, second, "ok!")) == "cache"
    messages = await stored_messages(server.core.store.db)
    assert [m["client_message_id"] for m in messages] == ["a", "b"]
    assert [m["mids"] for m in messages] == [[first], [second]], "each send absorbed exactly one echo"


async def test_one_send_and_two_identical_echoes_stores_the_second(server, client, tenant) -> None:
    ok_body(await mark_sent(client, "hello"))
    absorbed, typed = new_mid("echo"), new_mid("typed")
    assert dup_layer(await echo(client, absorbed, "hello")) == "cache"
    stored = ok_body(await echo(client, typed, "hello"))
    assert "duplicate" not in stored, "an identical text typed in the app is stored (P3)"
    messages = await stored_messages(server.core.store.db)
    assert [(m["type"], m["source"], m["mids"]) for m in messages] == [
        ("AI", "ai", [absorbed]),
        ("support", "instagram_direct", [typed]),
    ]


async def test_native_message_matching_an_old_outbound_one_is_stored(server, client, tenant) -> None:
    ok_body(await mark_sent(client, "See you tomorrow"))
    pairing = server.core.dedup.pairing
    window = server.core.settings.dedup_window_secs
    # The send is now older than the window (the clock is injected: no sleeping).
    pairing.clock = lambda: time.time() + window + 1
    stored = ok_body(await echo(client, new_mid(), "See you tomorrow"))
    assert "duplicate" not in stored
    assert [m["source"] for m in await stored_messages(server.core.store.db)] == ["ai", "instagram_direct"]


async def test_same_text_in_another_conversation_is_not_absorbed(server, client, tenant) -> None:
    ok_body(await mark_sent(client, "Hi!", customer=CUSTOMER_A))
    stored = ok_body(await echo(client, new_mid(), "Hi!", customer=CUSTOMER_B))
    assert "duplicate" not in stored
    assert len(await stored_messages(server.core.store.db, CUSTOMER_B)) == 1


async def test_customer_message_with_the_outbound_text_is_never_absorbed(server, client, tenant) -> None:
    ok_body(await mark_sent(client, "thanks"))
    customer_says = await client.webhook(messaging_body(text_item(new_mid("c"), "thanks")))
    assert "duplicate" not in ok_body(customer_says)
    messages = await stored_messages(server.core.store.db)
    assert [m["type"] for m in messages] == ["AI", "customer"]


async def test_multi_mid_send_whose_echoes_all_came_first_ends_as_one_message(recorded) -> None:
    running, sink = recorded
    client = running.client
    text_mid, image_mid = new_mid("text"), new_mid("image")
    ok_body(await echo(client, text_mid, "Here is the photo"))
    image_echo = messaging_body(
        {
            "sender": {"id": ACCOUNT_ID},
            "recipient": {"id": CUSTOMER_A},
            "timestamp": int(time.time() * 1000),
            "message": {
                "mid": image_mid,
                "is_echo": True,
                "attachments": [{"type": "image", "payload": {"url": "https://cdn.example/p.jpg"}}],
            },
        }
    )
    ok_body(await client.webhook(image_echo))
    sink.events.clear()

    sent = await mark_sent(
        client,
        "Here is the photo",
        type="support",
        mids=[text_mid, image_mid],
        media_url="https://cdn.example/p.jpg",
        client_message_id="photo-1",
    )
    assert sent.code == 200 and body_of(sent)["adopted"] is True
    [message] = await stored_messages(running.core.store.db)
    assert message["content"] == "Here is the photo" and message["client_message_id"] == "photo-1"
    hidden = await stored_messages(running.core.store.db, visible_only=False)
    assert len(hidden) == 2 and hidden[1]["merged_into"] == message["_id"]
    assert [e.name for e in sink.events][:2] == ["message_updated", "message_deleted"]
    token = (await connect_tenant(client)).token
    listing = await client.get(f"/api/v1/conversations/{message['conversation_id']}/messages", token=token)
    assert [m["id"] for m in body_of(listing)["messages"]] == [str(message["_id"])]
    # Redelivering the folded echo is still a mid duplicate, never a new message.
    assert dup_layer(await client.webhook(image_echo)) == "mid"


@pytest.fixture
async def on_embedded_redis(stores: EmbeddedStores, settings: Settings) -> AsyncIterator[RunningServer]:
    """A server on the embedded Redis node whatever the session's topology: the test stops it."""
    running = await start_server(on_single_redis(settings, stores.redis_url or ""))
    yield running
    await stop_server(running)


async def test_redis_down_keeps_p1_to_p3(stores: EmbeddedStores, on_embedded_redis: RunningServer) -> None:
    """P4: with Redis stopped every order still ends right, and no request fails."""
    server = on_embedded_redis
    client = server.client
    await connect_tenant(client)
    stores.stop_redis()
    try:
        ok_body(await mark_sent(client, "down-1"))
        assert dup_layer(await echo(client, new_mid(), "down-1")) == "database"
        early = new_mid()
        ok_body(await echo(client, early, "down-2"))
        adopted = await mark_sent(client, "down-2")
        assert adopted.code == 200 and body_of(adopted)["adopted"] is True
        typed = ok_body(await echo(client, new_mid(), "down-1"))
        assert "duplicate" not in typed, "the second identical text is stored"
        mid = new_mid()
        responses = await asyncio.gather(*[echo(client, mid, "down-3") for _ in range(3)])
        assert sorted(str(dup_layer(r)) for r in responses) == ["None", "mid", "mid"]
    finally:
        stores.start_redis()
    contents = [(m["content"], m["type"]) for m in await stored_messages(server.core.store.db)]
    assert sorted(contents) == [("down-1", "AI"), ("down-1", "support"), ("down-2", "AI"), ("down-3", "support")]
    assert sample(server.core.metrics, "igsync_store_errors_total", store="redis") >= 1
    # After the restart (Redis empty) the hints come back and MongoDB still decides.
    ok_body(await mark_sent(client, "after restart", mids=[after := new_mid()]))
    assert dup_layer(await echo(client, after, "after restart")) == "mid"
    assert await server.core.redis.ping()


async def test_the_pairing_survives_an_igsync_restart(settings) -> None:
    """P4 "after a restart too": the decision state is in MongoDB, not in the process."""
    first = await start_server(settings)
    await connect_tenant(first.client)
    ok_body(await mark_sent(first.client, "before restart"))
    early = new_mid()
    ok_body(await echo(first.client, early, "echo first"))
    await stop_server(first, drop=False)
    await first.core.redis.flushdb()  # and Redis lost everything meanwhile

    second = await start_server(settings)
    try:
        assert dup_layer(await echo(second.client, new_mid(), "before restart")) == "database"
        adopted = await mark_sent(second.client, "echo first")
        assert adopted.code == 200 and body_of(adopted)["adopted"] is True
        assert len(await stored_messages(second.core.store.db)) == 2
    finally:
        await stop_server(second)


async def test_a_hanging_redis_is_skipped_not_waited_for(settings) -> None:
    """A Redis that accepts connections but never answers: the short dedup timeout gives up,
    the error is counted, and MongoDB alone decides (P4)."""
    connections = []

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(writer)
        await reader.read()  # never answers

    blackhole = await asyncio.start_server(swallow, "127.0.0.1", 0)
    port = blackhole.sockets[0].getsockname()[1]
    running = await start_server(on_single_redis(settings, f"redis://127.0.0.1:{port}/0"))
    try:
        client = running.client
        await connect_tenant(client)
        ok_body(await mark_sent(client, "hang on"))
        assert dup_layer(await echo(client, new_mid(), "hang on")) == "database"
        early = new_mid()
        ok_body(await echo(client, early, "later"))
        assert body_of(await mark_sent(client, "later"))["adopted"] is True
        assert sample(running.core.metrics, "igsync_store_errors_total", store="redis") >= 1
        assert connections, "the dedup hints did try Redis"
    finally:
        await stop_server(running)
        for writer in connections:
            writer.close()
        blackhole.close()


async def test_an_echo_finishes_a_mark_sent_cut_short_after_its_insert(server, client, tenant) -> None:
    """mark-sent registered and inserted, then died before updating the conversation (a crash,
    MongoDB gone): its echo completes the write instead of leaving the conversation behind."""
    core = server.core
    data = {"account_id": ACCOUNT_ID, "customer_instagram_id": CUSTOMER_A, "content": "cut short", "type": "AI"}
    data = {**data, "message_type": "text", "mids": [], "client_message_id": None, "media_url": None}
    target = await core.marksent.resolve_target(data)
    await core.marksent.pairing.register_send(target.conversation_id, content_hash("cut short"), "s:crash", [])
    doc = outbound_message(data, target, "s:crash", [], [])
    await core.store.messages.insert(doc)  # ... and the process died here

    assert dup_layer(await echo(client, new_mid(), "cut short")) == "database"
    conversation = await conversation_of(core.store.db)
    assert conversation["recent_message_ids"] == [doc["_id"]] and conversation["status"] == "answered"
    assert conversation["last_message"]["id"] == doc["_id"]
