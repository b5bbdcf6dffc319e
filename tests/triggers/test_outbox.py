"""The outbox side: which stored messages get a trigger job, and that recording it is part
of storing the message (a failure answers 503, the redelivery records it, once)."""

from __future__ import annotations

import time
from typing import Any

from bson import ObjectId
from pymongo import ASCENDING

from config import Settings
from models.messages import TYPE_AI
from server.triggers.delivery import TriggerDispatcher
from tests.fakes.receiver import TriggerReceiver
from tests.support.fixtures_triggers import jobs
from tests.support.helpers import body_of, messaging_body, text_item, wait_for
from tests.support.server import RunningServer, start_server, stop_server
from tests.support.triggers import MessageSender, connect_with_triggers, http_triggers


async def customer_messages(server: RunningServer) -> list[dict[str, Any]]:
    return await server.core.store.messages.coll.find({"type": "customer"}).to_list(None)


async def test_no_triggers_configured_records_no_job(igsync: RunningServer) -> None:
    await connect_with_triggers(igsync.client, None)
    await MessageSender(igsync.client).send("hello")
    assert len(await customer_messages(igsync)) == 1
    assert await jobs(igsync) == []


async def test_ai_enabled_false_keeps_history_but_records_no_job(
    igsync: RunningServer, receiver: TriggerReceiver
) -> None:
    channel = await connect_with_triggers(igsync.client, http_triggers(receiver.url), ai_enabled=False)
    assert channel["ai_enabled"] is False
    sender = MessageSender(igsync.client)
    await sender.send("while AI is off")
    assert [m["content"] for m in await customer_messages(igsync)] == ["while AI is off"]
    assert await jobs(igsync) == []

    channel = await connect_with_triggers(igsync.client, http_triggers(receiver.url), ai_enabled=True)
    assert channel["ai_enabled"] is True
    await sender.send("AI is back")
    await wait_for(lambda: receiver.acked_contents() == ["AI is back"])
    assert len(await jobs(igsync)) == 1


async def test_a_redelivered_message_records_one_job_and_one_delivery(
    igsync: RunningServer, receiver: TriggerReceiver
) -> None:
    await connect_with_triggers(igsync.client, http_triggers(receiver.url))
    body = messaging_body(text_item("mid-redelivered", "only once"))
    first = await igsync.client.webhook(body)
    again = await igsync.client.webhook(body)
    assert first.code == again.code == 200
    assert body_of(again)["duplicate"] is True

    async def delivered() -> bool:
        return len(await jobs(igsync, state="delivered")) == 1

    await wait_for(delivered)
    assert len(await jobs(igsync)) == 1
    assert receiver.acked_contents() == ["only once"]


async def test_outbound_messages_never_get_a_job(igsync: RunningServer, receiver: TriggerReceiver) -> None:
    """What mark-sent stores (an AI or support message) goes through the same recorder."""
    await connect_with_triggers(igsync.client, http_triggers(receiver.url))
    await MessageSender(igsync.client).send("question")
    [question] = await customer_messages(igsync)
    template = {k: v for k, v in question.items() if not k.startswith("trigger_")}
    answer = {
        **template,
        "_id": ObjectId(),
        "mid": "ai-answer-mid",
        "mids": ["ai-answer-mid"],
        "content": "answer",
        "type": TYPE_AI,
        "source": "ai",
        "is_ai_response": True,
    }
    recorded = await igsync.core.recorder.record(answer, received_at=time.time())
    assert not recorded.duplicate
    stored = await igsync.core.store.messages.get(answer["_id"])
    assert "trigger_pending" not in stored and "trigger_targets" not in stored
    await wait_for(lambda: receiver.acked_contents() == ["question"])
    assert [j["message_id"] for j in await jobs(igsync)] == [question["_id"]]


async def test_both_targets_get_their_own_job_and_delivery_id(igsync: RunningServer, receiver: TriggerReceiver) -> None:
    triggers = http_triggers(receiver.url)
    triggers["redis_stream"] = True
    await connect_with_triggers(igsync.client, triggers)
    await MessageSender(igsync.client).send("to both")

    async def materialized() -> list[dict[str, Any]]:
        found = await jobs(igsync)
        return found if len(found) == 2 else []

    recorded = await wait_for(materialized)
    assert sorted(j["target"] for j in recorded) == ["http", "redis_stream"]
    assert len({j["_id"] for j in recorded}) == 2
    assert len({j["message_id"] for j in recorded}) == 1


async def test_the_trigger_is_recorded_in_the_message_write_or_the_webhook_answers_503(
    trigger_settings: Settings, receiver: TriggerReceiver
) -> None:
    # No dispatcher in this process: the marks stay visible.
    server = await start_server(trigger_settings.replace(trigger_workers=0))
    try:
        await connect_with_triggers(server.client, http_triggers(receiver.url))
        sender = MessageSender(server.client)
        await sender.send("first")
        [first] = await customer_messages(server)
        assert first["trigger_pending"] is True and first["trigger_targets"] == ["http"]
        assert await jobs(server) == [], "jobs are made off the hot path"

        # Make the marked insert fail with a store error that is not a duplicate mid: a unique
        # index of the test's own on the mark, already taken by the first message.
        messages = server.core.store.messages.coll
        await messages.create_index([("trigger_targets", ASCENDING)], unique=True, name="test_blocks_marks")
        body = messaging_body(text_item("mid-second", "must not be skipped", timestamp_ms=sender.base_ms + 100))
        response = await server.client.webhook(body)
        assert response.code == 503
        assert body_of(response)["error"] == "store_unavailable"
        assert [m["content"] for m in await customer_messages(server)] == ["first"], "nothing stored"

        await messages.drop_index("test_blocks_marks")
        response = await server.client.webhook(body)  # Meta's redelivery
        assert response.code == 200
        second = await server.core.store.messages.find_by_mid(first["channel_id"], "mid-second")
        assert second["trigger_pending"] is True
    finally:
        await stop_server(server, drop=False)

    # A dispatcher (another process's, or this one after a restart) turns the marks into jobs.
    server = await start_server(trigger_settings)
    try:
        await wait_for(lambda: receiver.acked_contents() == ["first", "must not be skipped"])
        assert all("trigger_pending" not in m for m in await customer_messages(server))
    finally:
        await stop_server(server)


async def test_marks_survive_a_failed_materialization_and_become_one_job_each(
    igsync: RunningServer, receiver: TriggerReceiver
) -> None:
    channel = await connect_with_triggers(igsync.client, http_triggers(receiver.url))
    coll = igsync.core.store.trigger_jobs.coll
    # Make the job insert fail for this channel with an error that is *not* "already
    # recorded": a unique index of the test's own, already taken.
    await coll.create_index([("channel_id", ASCENDING)], unique=True, name="test_blocks_jobs")
    await coll.insert_one({"_id": ObjectId(), "channel_id": ObjectId(channel["id"]), "state": "blocker"})
    sender = MessageSender(igsync.client)
    await sender.send("one")
    await sender.send("two")  # the webhook does not depend on the dispatcher

    def store_errors() -> float:
        return igsync.core.metrics.registry.get_sample_value("igsync_store_errors_total", {"store": "mongo"}) or 0.0

    await wait_for(lambda: store_errors() >= 2)  # the dispatcher tried, and failed, twice
    assert [m.get("trigger_pending") for m in await customer_messages(igsync)] == [True, True]

    await coll.drop_index("test_blocks_jobs")
    await coll.delete_many({"state": "blocker"})
    await wait_for(lambda: receiver.acked_contents() == ["one", "two"])
    assert len(await jobs(igsync)) == 2
    assert receiver.ack_counts().most_common(1)[0][1] == 1


async def test_jobs_of_a_channel_whose_triggers_were_turned_off_are_cancelled(igsync: RunningServer) -> None:
    receiver = TriggerReceiver()  # down: the job waits for a retry
    await connect_with_triggers(igsync.client, http_triggers(receiver.url, max_attempts=50))
    await MessageSender(igsync.client).send("pending")

    async def attempted() -> bool:
        return any(j["attempts"] > 0 for j in await jobs(igsync))

    await wait_for(attempted)
    await connect_with_triggers(igsync.client, http_triggers(receiver.url), ai_enabled=False)

    async def cancelled() -> list[dict[str, Any]]:
        return await jobs(igsync, state="cancelled")

    [job] = await wait_for(cancelled)
    assert job["cancel_reason"] == "triggers_off"

    def cancelled_count() -> float | None:
        return igsync.core.metrics.registry.get_sample_value(
            "igsync_trigger_deliveries_total", {"target": "http", "outcome": "cancelled"}
        )

    # Counted right after the cancellation is written: this poll may read the job in between.
    await wait_for(lambda: cancelled_count() is not None and cancelled_count() >= 1)
    assert cancelled_count() == 1


async def test_webhooks_come_first_deliveries_wait_while_they_are_handled(
    trigger_settings: Settings, receiver: TriggerReceiver
) -> None:
    server = await start_server(trigger_settings.replace(trigger_max_defer_secs=3600))
    dispatcher = next(s for s in server.core.services if isinstance(s, TriggerDispatcher))
    busy = {"now": False}
    dispatcher.webhooks_busy = lambda: busy["now"]

    def deferred() -> float:
        return server.core.metrics.registry.get_sample_value("igsync_trigger_deferred_polls_total") or 0.0

    try:
        await connect_with_triggers(server.client, http_triggers(receiver.url))
        busy["now"] = True  # as if webhooks were being handled without a pause
        await wait_for(lambda: deferred() >= 1)
        await MessageSender(server.client).send("wait for the webhooks")
        seen = deferred()
        await wait_for(lambda: deferred() >= seen + 3)  # three polls put off since the message came
        assert receiver.deliveries == []
        [message] = await customer_messages(server)
        assert message["trigger_pending"] is True, "not even turned into a job yet"

        busy["now"] = False
        await wait_for(lambda: receiver.acked_contents() == ["wait for the webhooks"])
    finally:
        await stop_server(server)


async def test_a_mark_seen_twice_still_makes_one_job(igsync: RunningServer, receiver: TriggerReceiver) -> None:
    """A crash between inserting the jobs and clearing the marks: the next poll inserts them
    again, and the unique (message, target) index keeps one job — one delivery."""
    await connect_with_triggers(igsync.client, http_triggers(receiver.url))
    await MessageSender(igsync.client).send("once")
    await wait_for(lambda: receiver.acked_contents() == ["once"])
    [message] = await customer_messages(igsync)
    await igsync.core.store.messages.coll.update_one(
        {"_id": message["_id"]}, {"$set": {"trigger_pending": True, "trigger_targets": ["http"]}}
    )

    async def mark_cleared() -> bool:
        stored = await igsync.core.store.messages.get(message["_id"])
        return "trigger_pending" not in stored

    await wait_for(mark_cleared)
    assert len(await jobs(igsync)) == 1
    assert receiver.acked_contents() == ["once"]
