"""A redelivery to the process that finished the message is answered from its memory
(server/ingest/recent.py): no store command, no event; a message whose events missed the log
is not remembered, so its redelivery still takes the store's path and repairs it."""

from __future__ import annotations

from pathlib import Path

from server.app.embedded import EmbeddedStores
from tests.support.commands import CommandNames, touching
from tests.support.dedup import sample
from tests.support.events import events_env
from tests.support.helpers import echo_item, messaging_body, text_item

DUPLICATE = {"status": "success", "duplicate": True, "layer": "mid"}
# Background work (the audit queue, pollers) may write at any time; these are the message's.
MESSAGE_COLLECTIONS = {"messages", "conversations", "customers", "echo_pairs", "orphan_events"}


def message_commands(names: CommandNames) -> list[list[tuple[str, str]]]:
    return [parts for parts in names.commands if any(coll in MESSAGE_COLLECTIONS for _, coll in parts)]


async def test_a_redelivery_to_the_process_that_stored_it_costs_no_store_command(
    stores: EmbeddedStores, tmp_path: Path
) -> None:
    names = CommandNames()
    async with events_env(stores, tmp_path, mongo_listeners=[names]) as env:
        customer = messaging_body(text_item("rc.1", "hello there", timestamp_ms=1_763_530_000_000))
        app_echo = messaging_body(echo_item("rc.2", "typed in the app", timestamp_ms=1_763_530_000_100))
        assert (await env.post(customer))["status"] == "success"
        assert (await env.post(app_echo))["status"] == "success"
        assert env.core.profiles is not None
        await env.core.profiles.idle()  # the new customer's profile lookup writes in the background
        events_before = len(env.events())
        duplicates_before = sample(env.core.metrics, "igsync_duplicates_total", layer="mid")

        names.on = True
        assert await env.post(customer) == DUPLICATE
        assert await env.post(app_echo) == DUPLICATE
        names.on = False

        assert message_commands(names) == []
        assert len(env.events()) == events_before
        assert sample(env.core.metrics, "igsync_duplicates_total", layer="mid") == duplicates_before + 2
        # The store's path gives the same answer (another process, or after the memory forgot).
        env.core.pipeline.recent.clear()
        names.on = True
        assert await env.post(customer) == DUPLICATE
        assert touching(names.commands, "messages") != []  # the refused insert, the holder's read
        stored = [m["content"] for m in await env.core.store.db.messages.find({}).to_list(None)]
        assert sorted(stored) == ["hello there", "typed in the app"]


async def test_a_message_whose_events_missed_the_log_is_repaired_by_its_redelivery(
    stores: EmbeddedStores, tmp_path: Path
) -> None:
    """Redis down at the first delivery: the events went to this process's sockets only, so the
    message is not remembered and its redelivery logs them."""
    redis = EmbeddedStores(tmp_path / "redis", mongo=False, lock=False).start()
    names = CommandNames()
    try:
        async with events_env(
            stores, tmp_path, realtime=True, redis_url=redis.redis_url, mongo_listeners=[names]
        ) as env:
            body = messaging_body(text_item("rl.1", "while Redis is down", timestamp_ms=1_763_530_000_000))
            redis.stop_redis()
            assert (await env.post(body))["status"] == "success"
            redis.start_redis()
            names.on = True
            assert await env.post(body) == DUPLICATE
            assert touching(names.commands, "messages") != []  # the store's path: the holder read, its events offered
            assert env.core.pipeline.recent.lookup(env.channel_oid, "rl.1") is None
    finally:
        redis.stop()
