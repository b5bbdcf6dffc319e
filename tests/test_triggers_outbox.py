"""The outbox side: which stored messages get a trigger job, and that recording it is part
of storing the message (a failure answers 503, the redelivery records it, once)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from bson import ObjectId
from pymongo import ASCENDING

from config import Settings
from models.messages import TYPE_AI
from tests.conftest import RunningServer, make_settings, start_server, stop_server
from tests.helpers import body_of, messaging_body, text_item, wait_for
from tests.triggers_support import (
    FAST_TRIGGERS,
    MessageSender,
    TriggerReceiver,
    connect_with_triggers,
    http_triggers,
)


@pytest.fixture
def trigger_settings(stores: Any, tmp_path: Any) -> Settings:
    return make_settings(stores, tmp_path, **FAST_TRIGGERS)


@pytest.fixture
async def igsync(trigger_settings: Settings) -> AsyncIterator[RunningServer]:
    running = await start_server(trigger_settings)
    yield running
    await stop_server(running)


@pytest.fixture
async def receiver() -> AsyncIterator[TriggerReceiver]:
    r = TriggerReceiver().start()
    yield r
    await r.stop()


async def jobs(server: RunningServer, **query: Any) -> list[dict[str, Any]]:
    return await server.core.store.trigger_jobs.coll.find(query).to_list(None)


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
    assert len(await jobs(igsync)) == 1

    async def delivered() -> bool:
        return len(await jobs(igsync, state="delivered")) == 1

    await wait_for(delivered)
    assert receiver.acked_contents() == ["only once"]


async def test_outbound_messages_never_get_a_job(igsync: RunningServer, receiver: TriggerReceiver) -> None:
    """What mark-sent stores (an AI or support message) goes through the same recorder."""
    await connect_with_triggers(igsync.client, http_triggers(receiver.url))
    await MessageSender(igsync.client).send("question")
    [question] = await customer_messages(igsync)
    answer = {
        **question,
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
    assert [j["message_id"] for j in await jobs(igsync)] == [question["_id"]]


async def test_both_targets_get_their_own_job_and_delivery_id(igsync: RunningServer, receiver: TriggerReceiver) -> None:
    triggers = http_triggers(receiver.url)
    triggers["redis_stream"] = True
    await connect_with_triggers(igsync.client, triggers)
    await MessageSender(igsync.client).send("to both")
    recorded = await jobs(igsync)
    assert sorted(j["target"] for j in recorded) == ["http", "redis_stream"]
    assert len({j["_id"] for j in recorded}) == 2
    assert len({j["message_id"] for j in recorded}) == 1


async def test_a_job_that_cannot_be_recorded_answers_503_and_the_redelivery_records_it(
    igsync: RunningServer, receiver: TriggerReceiver
) -> None:
    channel = await connect_with_triggers(igsync.client, http_triggers(receiver.url))
    coll = igsync.core.store.trigger_jobs.coll
    # Make the job insert fail for this channel with an error that is *not* "already recorded":
    # a unique index of the test's own, already taken.
    await coll.create_index([("channel_id", ASCENDING)], unique=True, name="test_blocks_jobs")
    await coll.insert_one({"_id": ObjectId(), "channel_id": ObjectId(channel["id"]), "state": "blocker"})
    body = messaging_body(text_item("mid-half-written", "must not be skipped"))

    response = await igsync.client.webhook(body)
    assert response.code == 503
    assert body_of(response)["error"] == "store_unavailable"
    [stored] = await customer_messages(igsync)  # the message itself was stored: half-written
    conversation = await igsync.core.store.conversations.get(stored["conversation_id"])
    assert conversation["last_message"] is None, "the conversation update comes after the job"

    await coll.drop_index("test_blocks_jobs")
    await coll.delete_many({"state": "blocker"})
    response = await igsync.client.webhook(body)  # Meta's redelivery
    assert response.code == 200
    [job] = await jobs(igsync)
    assert job["message_id"] == stored["_id"]
    await wait_for(lambda: receiver.acked_contents() == ["must not be skipped"])
    conversation = await igsync.core.store.conversations.get(stored["conversation_id"])
    assert conversation["last_message"]["content"] == "must not be skipped"


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
    value = igsync.core.metrics.registry.get_sample_value(
        "igsync_trigger_deliveries_total", {"target": "http", "outcome": "cancelled"}
    )
    assert value == 1
