"""HTTP trigger delivery against a real local receiver (a Tornado server in the test) that
answers 200, 500, 429 with Retry-After, 400, times out, or is down."""

from __future__ import annotations

import asyncio
from typing import Any

from config import Settings
from igsync_client.triggers import verify_trigger_signature
from models.serializers import CONVERSATION_FIELDS, WS_MESSAGE_FIELDS
from tests.fakes.receiver import TRIGGER_SECRET, TriggerReceiver
from tests.support.fixtures_triggers import cli, jobs
from tests.support.helpers import (
    ACCOUNT_ID,
    ADMIN_TOKEN,
    CUSTOMER_A,
    CUSTOMER_B,
    body_of,
    echo_item,
    messaging_body,
    wait_for,
)
from tests.support.server import RunningServer, start_server, stop_server
from tests.support.triggers import MessageSender, connect_with_triggers, http_triggers


async def all_delivered(server: RunningServer, count: int, timeout: float = 10) -> None:
    """Wait until igsync itself recorded ``count`` deliveries: the receiver notes an ack
    before igsync has read the answer, so its own list runs a little ahead."""

    async def done() -> bool:
        return await server.core.store.trigger_jobs.coll.count_documents({"state": "delivered"}) == count

    await wait_for(done, timeout=timeout)


def metric(server: RunningServer, name: str, **labels: str) -> float:
    value = server.core.metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


async def test_every_customer_message_arrives_signed_in_the_api_shapes(
    igsync: RunningServer, receiver: TriggerReceiver
) -> None:
    await connect_with_triggers(igsync.client, http_triggers(receiver.url))
    sender = MessageSender(igsync.client)
    for i in range(4):
        await sender.send(f"hello {i}")
    # Postbacks and quick replies are customer messages too; echoes are not.
    assert (await igsync.client.webhook_fixture("postback")).code == 200
    assert (await igsync.client.webhook_fixture("quick_reply")).code == 200
    assert (await igsync.client.webhook(messaging_body(echo_item("echo-1", "we replied")))).code == 200
    assert (await igsync.client.webhook_fixture("owner_echo_text")).code == 200

    await wait_for(lambda: len(receiver.acked()) == 6)
    await all_delivered(igsync, 6)
    recorded = await jobs(igsync)
    assert len(recorded) == 6, "one job per customer message, none for echoes"
    stored_types = {
        m["message_type"] for m in await igsync.core.store.messages.coll.find({"type": "customer"}).to_list(None)
    }
    assert {"postback", "quick_reply", "text"} <= stored_types

    delivery = next(d for d in receiver.acked() if d.content == "hello 0")
    assert receiver.acked_contents(delivery.conversation_id) == [f"hello {i}" for i in range(4)]
    assert receiver.ack_counts() == {str(j["_id"]): 1 for j in recorded}
    payload = delivery.payload
    assert set(payload) == {"event", "delivery_id", "channel", "conversation", "customer", "message"}
    assert payload["event"] == "customer_message"
    assert delivery.headers["X-Igsync-Delivery"] == payload["delivery_id"]
    assert delivery.headers["X-Igsync-Event"] == "customer_message"
    assert delivery.headers["X-Igsync-Attempt"] == "1"
    assert set(payload["message"]) >= set(WS_MESSAGE_FIELDS)
    assert set(payload["conversation"]) == set(CONVERSATION_FIELDS)
    assert payload["customer"]["instagram_id"] == CUSTOMER_A
    assert payload["customer"] == payload["conversation"]["customer"]
    assert payload["channel"]["page_id"] == ACCOUNT_ID
    assert payload["channel"]["triggers"]["http"]["secret_set"] is True
    assert TRIGGER_SECRET.encode() not in delivery.body, "the secret signs the body, it is never in it"
    # The same message as the inbox API shows it.
    listed = await igsync.client.get(
        f"/api/v1/conversations/{delivery.conversation_id}/messages", token=await inbox_token(igsync)
    )
    [shown] = [m for m in body_of(listed)["messages"] if m["id"] == payload["message"]["id"]]
    # (The message is shown as it was when delivered: the echo may have answered it by then.)
    assert {**shown, "is_answered": payload["message"]["is_answered"]} == payload["message"]

    # The signature verifies with the client helper, over the raw bytes, and only those.
    header = delivery.headers["X-Igsync-Signature-256"]
    assert verify_trigger_signature(delivery.body, header, TRIGGER_SECRET)
    altered = delivery.body.replace(b"hello 0", b"hello 9")
    assert altered != delivery.body
    assert not verify_trigger_signature(altered, header, TRIGGER_SECRET)
    assert not verify_trigger_signature(delivery.body, header, "another-secret-0123456789")
    assert all(j["state"] == "delivered" and j["attempts"] == 1 for j in await jobs(igsync))
    # Counted around the writes that mark the jobs delivered: waited for, not raced.
    await wait_for(
        lambda: (
            metric(igsync, "igsync_trigger_deliveries_total", target="http", outcome="delivered") == 6
            and metric(igsync, "igsync_trigger_attempts_total", target="http", result="ok") == 6
        )
    )


async def inbox_token(server: RunningServer) -> str:
    response = await server.client.post("/api/v1/tokens", {"owner_email": "owner@example.com"}, token=ADMIN_TOKEN)
    return body_of(response)["token"]


async def test_5xx_is_retried_until_it_arrives(igsync: RunningServer, receiver: TriggerReceiver) -> None:
    async def flaky(payload: dict[str, Any], attempt: int) -> tuple[int, dict[str, str]]:
        return (500, {}) if attempt < 3 else (200, {})

    receiver.behaviour = flaky
    await connect_with_triggers(igsync.client, http_triggers(receiver.url))
    sender = MessageSender(igsync.client)
    await sender.send("one")
    await sender.send("two")
    await wait_for(lambda: len(receiver.acked()) == 2)
    await all_delivered(igsync, 2)
    assert receiver.acked_contents() == ["one", "two"]
    assert [(d.content, d.attempt, d.status) for d in receiver.deliveries] == [
        ("one", 1, 500),
        ("one", 2, 500),
        ("one", 3, 200),
        ("two", 1, 500),
        ("two", 2, 500),
        ("two", 3, 200),
    ]
    assert all(j["attempts"] == 3 and j["state"] == "delivered" for j in await jobs(igsync))
    assert metric(igsync, "igsync_trigger_attempts_total", target="http", result="server_error") == 4


async def test_429_waits_at_least_retry_after(igsync: RunningServer, receiver: TriggerReceiver) -> None:
    async def busy_once(payload: dict[str, Any], attempt: int) -> tuple[int, dict[str, str]]:
        return (429, {"Retry-After": "1"}) if attempt == 1 else (200, {})

    receiver.behaviour = busy_once
    await connect_with_triggers(igsync.client, http_triggers(receiver.url))
    await MessageSender(igsync.client).send("slow down")
    await wait_for(lambda: len(receiver.acked()) == 1)
    await all_delivered(igsync, 1)
    first, second = receiver.deliveries
    assert (first.status, second.status) == (429, 200)
    # The base delay is 0.05 s: only Retry-After explains a gap of a second.
    assert second.received_at - first.received_at >= 1.0
    assert metric(igsync, "igsync_trigger_attempts_total", target="http", result="rate_limited") == 1


async def test_a_receiver_that_times_out_is_tried_again(igsync: RunningServer, receiver: TriggerReceiver) -> None:
    release = asyncio.Event()

    async def hangs_first(payload: dict[str, Any], attempt: int) -> tuple[int, dict[str, str]]:
        if attempt == 1:
            await release.wait()
        return 200, {}

    receiver.behaviour = hangs_first
    await connect_with_triggers(igsync.client, http_triggers(receiver.url, timeout_secs=0.3))
    await MessageSender(igsync.client).send("are you there")

    async def delivered() -> bool:
        found = await jobs(igsync, state="delivered")
        return len(found) == 1

    await wait_for(delivered)
    release.set()
    job = (await jobs(igsync))[0]
    assert job["attempts"] == 2
    assert [d.attempt for d in receiver.deliveries] == [1, 2]
    assert metric(igsync, "igsync_trigger_attempts_total", target="http", result="timeout") == 1


async def test_other_4xx_is_dead_lettered_at_once(igsync: RunningServer, receiver: TriggerReceiver) -> None:
    async def refuses(payload: dict[str, Any], attempt: int) -> tuple[int, dict[str, str]]:
        return 400, {}

    receiver.behaviour = refuses
    channel = await connect_with_triggers(igsync.client, http_triggers(receiver.url))
    await MessageSender(igsync.client).send("nope")

    async def dead() -> list[dict[str, Any]]:
        response = await igsync.client.get("/api/v1/triggers/dead", token=ADMIN_TOKEN)
        return body_of(response)["deliveries"]

    [entry] = await wait_for(dead)
    assert len(receiver.deliveries) == 1, "a 4xx is not retried"
    assert entry["target"] == "http"
    assert entry["channel_id"] == channel["id"]
    assert entry["attempts"] == 1
    assert entry["last_error"]["result"] == "client_error"
    assert entry["last_error"]["status"] == 400
    assert "receiver said no" in entry["last_error"]["detail"]
    assert entry["delivery_id"] == receiver.deliveries[0].delivery_id
    # Counted once the dead letter is written (the dispatcher resumes after the write's reply):
    # the API may show the entry a moment before the counter moves.
    await wait_for(lambda: metric(igsync, "igsync_trigger_deliveries_total", target="http", outcome="dead") == 1)


async def test_order_per_conversation_holds_while_other_conversations_flow(
    igsync: RunningServer, receiver: TriggerReceiver
) -> None:
    release_a = asyncio.Event()

    async def a_is_failing(payload: dict[str, Any], attempt: int) -> tuple[int, dict[str, str]]:
        if payload["customer"]["instagram_id"] == CUSTOMER_A and not release_a.is_set():
            return 503, {}
        return 200, {}

    receiver.behaviour = a_is_failing
    await connect_with_triggers(igsync.client, http_triggers(receiver.url, max_attempts=50))
    sender = MessageSender(igsync.client)
    for i in range(3):
        await sender.send(f"a{i}", customer=CUSTOMER_A)
        await sender.send(f"b{i}", customer=CUSTOMER_B)

    await wait_for(lambda: len(receiver.acked()) == 3)
    assert receiver.acked_contents() == ["b0", "b1", "b2"], "B flows while A's first message keeps failing"
    # A's later messages wait behind its first: they were never even attempted.
    await wait_for(lambda: len([d for d in receiver.deliveries if d.content == "a0"]) >= 3)
    assert {d.content for d in receiver.deliveries if d.content.startswith("a")} == {"a0"}

    release_a.set()
    await wait_for(lambda: len(receiver.acked()) == 6)
    a_conversation = next(d.conversation_id for d in receiver.deliveries if d.content == "a0")
    assert receiver.acked_contents(a_conversation) == ["a0", "a1", "a2"]
    assert max(receiver.max_in_flight.values()) == 1


async def test_a_dead_receiver_dead_letters_then_the_retry_command_delivers(
    igsync: RunningServer, trigger_settings: Settings
) -> None:
    receiver = TriggerReceiver()  # not started: connection refused
    await connect_with_triggers(igsync.client, http_triggers(receiver.url, max_attempts=3))
    sender = MessageSender(igsync.client)
    await sender.send("first")
    await sender.send("second")

    async def dead_ids() -> list[str]:
        response = await igsync.client.get("/api/v1/triggers/dead", token=ADMIN_TOKEN)
        ids = [d["delivery_id"] for d in body_of(response)["deliveries"]]
        return ids if len(ids) == 2 else []

    ids = await wait_for(dead_ids)
    for job in await jobs(igsync):
        assert job["state"] == "dead"
        assert job["attempts"] == 3
        assert job["last_error"]["result"] == "network_error"
    assert metric(igsync, "igsync_trigger_attempts_total", target="http", result="network_error") == 6

    receiver.start()
    try:
        code, result, err = await cli(trigger_settings, "triggers", "retry", *ids)
        assert code == 0, err
        assert result["retried"] == 2, result
        await wait_for(lambda: len(receiver.acked()) == 2)
        await all_delivered(igsync, 2)
        assert receiver.acked_contents() == ["first", "second"]
        assert sorted(receiver.ack_counts()) == sorted(ids)
        for job in await jobs(igsync):
            assert job["state"] == "delivered"
            assert job["retries"] == 1
        response = await igsync.client.get("/api/v1/triggers/dead", token=ADMIN_TOKEN)
        assert body_of(response)["deliveries"] == []
    finally:
        await receiver.stop()


async def test_undelivered_jobs_are_delivered_after_a_restart(trigger_settings: Settings) -> None:
    receiver = TriggerReceiver()  # down while the first igsync runs
    first = await start_server(trigger_settings)
    try:
        await connect_with_triggers(first.client, http_triggers(receiver.url, max_attempts=50))
        sender = MessageSender(first.client)
        for i in range(3):
            await sender.send(f"before restart {i}")

        async def attempted() -> bool:
            return any(j["attempts"] > 0 for j in await jobs(first))

        await wait_for(attempted)
    finally:
        await stop_server(first, drop=False)

    receiver.start()
    second = await start_server(trigger_settings)
    try:
        await wait_for(lambda: len(receiver.acked()) == 3)
        await all_delivered(second, 3)
        assert receiver.acked_contents() == [f"before restart {i}" for i in range(3)]
        assert all(j["state"] == "delivered" for j in await jobs(second))
    finally:
        await receiver.stop()
        await stop_server(second)


async def test_two_dispatchers_deliver_each_job_once_one_at_a_time_per_conversation(
    trigger_settings: Settings, receiver: TriggerReceiver
) -> None:
    both_busy = asyncio.Event()

    async def gated(payload: dict[str, Any], attempt: int) -> tuple[int, dict[str, str]]:
        # Each dispatcher delivers two lanes at most: four deliveries in flight at once means
        # both are at work. Until then every delivery is held, so neither can do it all alone.
        if sum(receiver._in_flight.values()) >= 4:
            both_busy.set()
        await both_busy.wait()
        await asyncio.sleep(0.01)  # keeps deliveries in flight long enough to overlap if they could
        return 200, {}

    receiver.behaviour = gated
    settings = trigger_settings.replace(trigger_workers=2)
    one = await start_server(settings)
    two = await start_server(settings)
    try:
        await connect_with_triggers(one.client, http_triggers(receiver.url))
        customers = [f"62000000000009{i:02d}" for i in range(6)]
        senders = [MessageSender(one.client, "p"), MessageSender(two.client, "q")]
        expected: dict[str, list[str]] = {c: [] for c in customers}
        for n in range(5):
            for i, customer in enumerate(customers):
                text = f"{customer}-{n}"
                await senders[(n + i) % 2].send(text, customer=customer)
                expected[customer].append(text)
        await wait_for(lambda: len(receiver.acked()) == 30, timeout=30)
        await all_delivered(one, 30)
        counts = receiver.ack_counts()
        assert len(counts) == 30 and set(counts.values()) == {1}, "each delivery_id exactly once"
        assert max(receiver.max_in_flight.values()) == 1
        by_customer: dict[str, list[str]] = {c: [] for c in customers}
        for d in receiver.acked():
            by_customer[d.payload["customer"]["instagram_id"]].append(d.content)
        assert by_customer == expected
        delivered = [
            metric(s, "igsync_trigger_deliveries_total", target="http", outcome="delivered") for s in (one, two)
        ]
        assert sum(delivered) == 30
        assert min(delivered) > 0, delivered
    finally:
        await stop_server(two, drop=False)
        await stop_server(one)
