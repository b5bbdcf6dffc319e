"""Every metric of API.md §5 and docs/operations.md, read from a real server's ``/metrics``
after driving real events through it: each series exists before its first event and
moves by exactly what the event must produce."""

from __future__ import annotations

import asyncio
import datetime as dt
import platform
import re
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from bson import ObjectId
from pymongo import monitoring
from pymongo.errors import OperationFailure
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from config import ConfigError, Settings
from models.store import Store
from models.timeutil import utcnow
from server.app.embedded import EmbeddedStores, free_port
from server.inbox.events import RecordingSink
from server.ops.metrics import (
    DUPLICATE_LAYERS,
    MARK_SENT_OUTCOMES,
    SILENCE_THRESHOLDS_SECS,
    WEBHOOK_OUTCOMES,
    WS_DISCONNECT_REASONS,
    Metrics,
    package_version,
)
from server.ops.monitor import ChannelActivity, DuplicateTally
from server.ops.redis_clients import RedisTopology
from tests.fakes.cdn import JPEG
from tests.support.events import events_env, fixture_with
from tests.support.helpers import (
    ACCOUNT_ID,
    ADMIN_TOKEN,
    CUSTOMER_A,
    METRICS_TOKEN,
    body_of,
    echo_item,
    fixture_bytes,
    messaging_body,
    text_item,
    wait_for,
)
from tests.support.observability import Key, key, scrape
from tests.support.realtime import WsClient
from tests.support.server import RunningServer, Tenant, connect_tenant, on_single_redis, start_server, stop_server

# API.md §5, verbatim: the names inbox operators and the dashboard rely on.
DOCUMENTED = {
    "igsync_webhook_requests_total": "counter",
    "igsync_webhook_events_total": "counter",
    "igsync_duplicates_total": "counter",
    "igsync_webhook_duration_seconds": "histogram",
    "igsync_event_delivery_seconds": "histogram",
    "igsync_echo_delay_seconds": "histogram",
    "igsync_mark_sent_total": "counter",
    "igsync_ws_connections": "gauge",
    "igsync_ws_disconnects_total": "counter",
    "igsync_store_errors_total": "counter",
}
# What docs/operations.md adds for operators.
OPERATIONS = {
    "igsync_build_info": "gauge",
    "igsync_ready": "gauge",
    "igsync_store_up": "gauge",
    "igsync_channels_connected": "gauge",
    "igsync_channels_silent": "gauge",
    "igsync_duplicates_stored": "gauge",
    "igsync_monitor_runs_total": "counter",
    "igsync_pubsub_reconnects_total": "counter",
    "igsync_mongo_command_duration_seconds": "histogram",
    "igsync_mongo_command_failures_total": "counter",
    "igsync_redis_command_duration_seconds": "histogram",
    "igsync_redis_command_failures_total": "counter",
    "igsync_http_requests_total": "counter",
    "igsync_http_request_duration_seconds": "histogram",
}

# The series of message changes, media and profiles; described in docs/events.md and docs/operations.md.
EVENTS = {
    "igsync_orphan_events_total": "counter",
    "igsync_media_jobs_total": "counter",
    "igsync_media_link_refreshes_total": "counter",
    "igsync_profile_lookups_total": "counter",
}

WEBHOOK_SERIES = ("igsync_webhook_requests_total", "igsync_webhook_events_total", "igsync_duplicates_total")


def family_name(name: str) -> str:
    # The parser names counter families without their _total suffix.
    return name.removesuffix("_total")


async def test_every_series_exists_at_zero_before_its_first_event(server: RunningServer) -> None:
    await server.core.monitor.stop()  # a quiet process: only what this test does moves
    metrics = await scrape(server.client)
    for name, kind in {**DOCUMENTED, **OPERATIONS, **EVENTS}.items():
        assert metrics.families.get(family_name(name)) == kind, name
    for layer in DUPLICATE_LAYERS:
        assert metrics.value("igsync_duplicates_total", layer=layer) == 0
    for outcome in WEBHOOK_OUTCOMES:
        assert metrics.value("igsync_webhook_requests_total", outcome=outcome) == 0
    for outcome in MARK_SENT_OUTCOMES:
        assert metrics.value("igsync_mark_sent_total", outcome=outcome) == 0
    for reason in WS_DISCONNECT_REASONS:
        assert metrics.value("igsync_ws_disconnects_total", reason=reason) == 0
    for store in ("mongo", "redis"):
        assert metrics.value("igsync_store_errors_total", store=store) == 0
    for threshold in SILENCE_THRESHOLDS_SECS:
        assert metrics.has("igsync_channels_silent", threshold=threshold)
    assert metrics.value("igsync_webhook_events_total", kind="message", direction="customer_to_owner") == 0
    assert metrics.value("igsync_webhook_duration_seconds_count") == 0
    assert metrics.value("igsync_event_delivery_seconds_count") == 0
    assert metrics.value("igsync_echo_delay_seconds_count") == 0
    assert metrics.value("igsync_event_delivery_seconds_bucket", le="1.0") == 0
    assert metrics.value("igsync_ws_connections") == 0
    assert metrics.value("igsync_pubsub_reconnects_total") == 0
    assert metrics.value("igsync_redis_command_failures_total", command="xadd") == 0
    assert metrics.value("igsync_mongo_command_failures_total", command="findAndModify") == 0
    # Every route's handler has its request series before its first request.
    for handler in ("InstagramWebhookHandler", "ChannelsHandler", "MetricsHandler", "NotFoundHandler"):
        assert metrics.has("igsync_http_request_duration_seconds_count", handler=handler), handler
    assert (
        metrics.value("igsync_http_requests_total", handler="InstagramWebhookHandler", method="POST", status="5xx") == 0
    )
    assert metrics.value("igsync_http_requests_total", handler="ChannelHandler", method="DELETE", status="2xx") == 0


async def test_labels_are_bounded_sets(server: RunningServer, tenant: Tenant) -> None:
    """No label takes an id, a path or user input: after real traffic with ids in paths and
    queries, every label value is still one of the fixed, short vocabulary."""
    conversation_path = f"/api/v1/conversations/{ObjectId()}/messages?limit=5"
    assert (await server.client.get(conversation_path, token=tenant.token)).code == 404
    assert (await server.client.get(f"/no/such/{ObjectId()}")).code == 404
    assert (await server.client.webhook_fixture("customer_text")).code == 200
    metrics = await scrape(server.client)
    numeric = {"le": r"[0-9.e+-]+|\+Inf", "status": r"[1-5]xx", "version": r"[0-9][0-9a-z.+-]*", "python": r"[0-9.]+"}
    for (name, labels), _ in metrics.samples.items():
        for label, value in labels:
            if label in numeric:
                assert re.fullmatch(numeric[label], value), (name, label, value)
            else:
                assert re.fullmatch(r"[A-Za-z_]{1,40}|[0-9]+h", value), (name, label, value)


async def test_each_kind_of_webhook_moves_exactly_its_series(server: RunningServer, tenant: Tenant) -> None:
    client = server.client
    await server.core.monitor.stop()

    async def step(
        body: bytes, expected: dict[Key, float], *, signature: str | None = "auto", status: int = 200
    ) -> None:
        before = await scrape(client)
        response = await client.webhook(body, signature=signature)
        assert response.code == status, response.body
        after = await scrape(client)
        moved = {}
        for name in WEBHOOK_SERIES:
            moved.update(after.changed(before, name))
        assert moved == expected, body[:200]
        assert after.delta(before, "igsync_webhook_duration_seconds_count") == 1
        assert (
            after.delta(
                before,
                "igsync_http_requests_total",
                handler="InstagramWebhookHandler",
                method="POST",
                status="%dxx" % (status // 100),
            )
            == 1
        )

    def requests(outcome: str) -> Key:
        return key("igsync_webhook_requests_total", {"outcome": outcome})

    def events(kind: str, direction: str) -> Key:
        return key("igsync_webhook_events_total", {"kind": kind, "direction": direction})

    processed = requests("processed")
    text = fixture_bytes("customer_text")
    await step(text, {processed: 1, events("message", "customer_to_owner"): 1})
    # Meta's redelivery of the same mid: layer "mid" moves by exactly one, nothing is stored.
    await step(
        text,
        {processed: 1, events("message", "customer_to_owner"): 1, key("igsync_duplicates_total", {"layer": "mid"}): 1},
    )
    await step(fixture_bytes("owner_echo_text"), {processed: 1, events("message", "owner_to_customer"): 1})
    await step(fixture_bytes("customer_reaction"), {processed: 1, events("reaction", "customer_to_owner"): 1})
    await step(fixture_bytes("read_receipt"), {processed: 1, events("read", "customer_to_owner"): 1})
    await step(fixture_bytes("customer_reply_to_message"), {processed: 1, events("message", "customer_to_owner"): 1})
    await step(fixture_bytes("message_edit"), {processed: 1, events("edit", "customer_to_owner"): 1})
    await step(fixture_bytes("customer_unsend"), {processed: 1, events("unsend", "customer_to_owner"): 1})
    await step(fixture_bytes("changes_test_payload"), {processed: 1, events("test", "none"): 1})
    await step(
        messaging_body(text_item("m.unknown.1", "hi"), account_id="17841499999999999"),
        {processed: 1, events("ignored", "none"): 1},
    )
    invalid = orjson.dumps(
        {"object": "instagram", "entry": [{"id": ACCOUNT_ID, "messaging": [{"message": {"mid": "x", "text": "y"}}]}]}
    )
    await step(invalid, {processed: 1, events("invalid", "none"): 1})
    two = messaging_body(text_item("m.batch.1", "one"), echo_item("m.batch.2", "two"))
    await step(
        two, {processed: 1, events("message", "customer_to_owner"): 1, events("message", "owner_to_customer"): 1}
    )
    await step(text, {requests("invalid_signature"): 1}, signature="sha256=" + "0" * 64, status=401)
    await step(text, {requests("invalid_signature"): 1}, signature=None, status=401)
    await step(b"not json", {requests("bad_request"): 1}, status=400)
    await step(orjson.dumps({"object": "page", "entry": []}), {requests("bad_request"): 1}, status=400)


async def test_too_large_body_is_counted(stores, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from tests.support.server import make_settings

    running = await start_server(make_settings(stores, tmp_path, max_body_bytes=2048))
    try:
        before = await scrape(running.client)
        response = await running.client.webhook(messaging_body(text_item("m.big", "x" * 4096)))
        assert response.code == 413
        after = await scrape(running.client)
        assert after.changed(before, "igsync_webhook_requests_total") == {
            key("igsync_webhook_requests_total", {"outcome": "too_large"}): 1
        }
        assert after.changed(before, "igsync_webhook_events_total") == {}
    finally:
        await stop_server(running)


def _dead_url(scheme: str) -> str:
    port = free_port()  # nothing listens there
    if scheme == "mongodb":
        return f"mongodb://127.0.0.1:{port}/?retryWrites=false&directConnection=true"
    return f"redis://127.0.0.1:{port}/0"


async def test_mongodb_down_counts_store_errors_and_readiness(settings: Settings) -> None:
    running = await start_server(
        settings.replace(mongo_url=_dead_url("mongodb"), store_timeout_ms=300), ensure_indexes=False
    )
    try:
        # Background pollers (monitor, trigger dispatcher, workers) count their own store
        # errors; stop them so that the webhook's errors are counted alone.
        for service in running.core.services:
            if service is not running.core.realtime:
                await service.stop()
        before = await scrape(running.client)
        response = await running.client.webhook(fixture_bytes("customer_text"))
        assert response.code == 503
        assert body_of(response)["error"] == "store_unavailable"
        after = await scrape(running.client)
        assert after.delta(before, "igsync_webhook_requests_total", outcome="store_error") == 1
        # One failed webhook is one store error (the audit write that also fails is not a second).
        assert after.delta(before, "igsync_store_errors_total", store="mongo") == 1
        assert after.changed(before, "igsync_duplicates_total") == {}

        response = await running.client.get("/readyz")
        assert response.code == 503
        metrics = await scrape(running.client)
        assert metrics.value("igsync_ready") == 0
        assert metrics.value("igsync_store_up", store="mongo") == 0
        assert metrics.value("igsync_store_up", store="redis") == 1
        assert metrics.delta(after, "igsync_store_errors_total", store="mongo") == 1
    finally:
        await stop_server(running)


async def test_redis_down_counts_command_failures_and_readiness(settings: Settings) -> None:
    # A RecordingSink instead of the realtime hub: no background Redis reader retrying (and
    # counting its own failures) while this test counts exactly what one /readyz does.
    running = await start_server(
        on_single_redis(settings, _dead_url("redis")).replace(store_timeout_ms=300), sink=RecordingSink()
    )
    try:
        await running.core.monitor.stop()
        before = await scrape(running.client)
        response = await running.client.get("/readyz")
        assert response.code == 503
        assert body_of(response)["checks"] == {"mongo": True, "redis": False}
        after = await scrape(running.client)
        assert after.value("igsync_ready") == 0
        assert after.value("igsync_store_up", store="redis") == 0
        assert after.value("igsync_store_up", store="mongo") == 1
        assert after.delta(before, "igsync_store_errors_total", store="redis") == 1
        assert after.delta(before, "igsync_redis_command_failures_total", command="ping") == 1
    finally:
        await stop_server(running)


async def test_readiness_gauge_follows_readyz(server: RunningServer) -> None:
    await server.core.monitor.stop()
    assert (await server.client.get("/readyz")).code == 200
    metrics = await scrape(server.client)
    assert metrics.value("igsync_ready") == 1
    assert metrics.value("igsync_store_up", store="mongo") == 1
    assert metrics.value("igsync_store_up", store="redis") == 1


async def test_mongodb_command_latency_and_failures(server: RunningServer, tenant: Tenant) -> None:
    await server.core.monitor.stop()
    before = await scrape(server.client)
    assert (await server.client.webhook(messaging_body(text_item("m.lat.1", "hello")))).code == 200
    after = await scrape(server.client)
    # A new message is at least one insert (the message) and one update (its conversation).
    assert after.delta(before, "igsync_mongo_command_duration_seconds_count", command="insert") >= 1
    assert after.delta(before, "igsync_mongo_command_duration_seconds_count", command="update") >= 1
    assert after.delta(before, "igsync_mongo_command_duration_seconds_sum", command="insert") > 0
    with pytest.raises(OperationFailure):
        await server.core.store.db.command("igsyncNoSuchCommand")
    failed = await scrape(server.client)
    assert failed.delta(after, "igsync_mongo_command_failures_total", command="other") == 1
    assert failed.delta(after, "igsync_mongo_command_duration_seconds_count", command="other") == 1


async def test_redis_command_latency_and_failures(server: RunningServer) -> None:
    await server.core.monitor.stop()
    redis = server.core.redis
    prefix = "t:" + ObjectId().__str__()
    before = await scrape(server.client)
    await redis.set(prefix + ":a", b"1", ex=60)
    await redis.get(prefix + ":a")
    pipe = redis.pipeline(transaction=False)
    pipe.incr(prefix + ":n")
    pipe.expire(prefix + ":n", 60)
    await pipe.execute()
    async with redis.pipeline(transaction=True) as tx:
        tx.incr(prefix + ":n")
        await tx.execute()
    await redis.xread({prefix + ":stream": "0-0"}, count=1)
    await redis.xread({prefix + ":stream": "$"}, count=1, block=5)  # blocks: counted as a call, never timed
    with pytest.raises(ResponseError):
        await redis.execute_command("IGSYNCNOSUCHCOMMAND")
    after = await scrape(server.client)

    def timed(command: str) -> float:
        return after.delta(before, "igsync_redis_command_duration_seconds_count", command=command)

    assert timed("set") == 1
    assert timed("get") == 1
    assert timed("pipeline") == 1
    assert timed("multi") == 1
    # Commands inside a pipeline are one round trip: not counted one by one.
    assert timed("incr") == 0
    assert timed("xread") == 1
    assert timed("other") == 1
    assert after.delta(before, "igsync_redis_command_failures_total", command="other") == 1
    assert after.delta(before, "igsync_redis_command_failures_total", command="set") == 0


async def test_http_requests_by_handler_method_and_status_class(server: RunningServer, tenant: Tenant) -> None:
    client = server.client
    before = await scrape(client)
    assert (await client.get("/api/v1/channels", token=tenant.token)).code == 200
    assert (await client.get("/api/v1/channels")).code == 401
    assert (await client.get("/api/v1/channels", token=ADMIN_TOKEN)).code == 403
    assert (await client.get("/no/such/path?access_token=x")).code == 404
    after = await scrape(client)
    moved = after.changed(before, "igsync_http_requests_total")
    assert moved == {
        key("igsync_http_requests_total", {"handler": "ChannelsHandler", "method": "GET", "status": "2xx"}): 1,
        key("igsync_http_requests_total", {"handler": "ChannelsHandler", "method": "GET", "status": "4xx"}): 2,
        key("igsync_http_requests_total", {"handler": "NotFoundHandler", "method": "GET", "status": "4xx"}): 1,
        # the scrape before this one is answered (and counted) before the one after is taken
        key("igsync_http_requests_total", {"handler": "MetricsHandler", "method": "GET", "status": "2xx"}): 1,
    }
    assert after.delta(before, "igsync_http_request_duration_seconds_count", handler="ChannelsHandler") == 3
    # Labels never carry the path: the unknown path above made no series of its own.
    assert not any("no/such" in str(labels) for (_, labels) in after.samples)


async def test_metrics_behind_a_token(settings: Settings) -> None:
    running = await start_server(settings.replace(metrics_token=METRICS_TOKEN))
    try:
        client = running.client
        for token in (None, "wrong-" + METRICS_TOKEN, METRICS_TOKEN[:-1]):
            response = await client.get("/metrics", token=token)
            assert response.code == 401, token
            assert body_of(response)["error"] == "unauthorized"
            assert b"igsync_" not in response.body
        # A valid token of another kind is 403 (API.md §6).
        response = await client.get("/metrics", token=ADMIN_TOKEN)
        assert response.code == 403
        assert body_of(response)["error"] == "forbidden"
        response = await client.get("/metrics", token=METRICS_TOKEN)
        assert response.code == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        assert b"igsync_webhook_requests_total" in response.body
    finally:
        await stop_server(running)


async def test_metrics_open_without_a_token(server: RunningServer) -> None:
    response = await server.client.get("/metrics")
    assert response.code == 200
    assert b"igsync_build_info" in response.body


async def test_build_info_and_process_metrics(server: RunningServer) -> None:
    metrics = await scrape(server.client)
    assert metrics.value("igsync_build_info", version=package_version(), python=platform.python_version()) == 1
    assert package_version() != "unknown"
    assert metrics.value("process_resident_memory_bytes") > 0


async def test_silent_channels_by_threshold(server: RunningServer, tenant: Tenant) -> None:
    monitor = server.core.monitor
    await monitor.stop()
    other = await connect_tenant(server.client, page_id="17841400000000777", email="quiet@example.com", username="q")
    gone = await connect_tenant(server.client, page_id="17841400000000888", email="gone@example.com", username="g")
    assert (
        await server.client.request("DELETE", f"/api/v1/channels/{gone.channel['id']}", token=ADMIN_TOKEN)
    ).code == 200
    assert (await server.client.webhook(messaging_body(text_item("m.silence.1", "hello")))).code == 200
    now = utcnow()

    async def silent_at(later: dt.timedelta) -> dict[str, float]:
        assert await monitor.refresh(now + later)
        metrics = await scrape(server.client)
        assert metrics.value("igsync_channels_connected") == 2  # the disconnected one is not watched
        return {t: metrics.value("igsync_channels_silent", threshold=t) for t in SILENCE_THRESHOLDS_SECS}

    # Just now: the tenant has had a webhook, the other channel was just connected.
    assert await silent_at(dt.timedelta(0)) == {"1h": 0, "6h": 0, "24h": 0}
    assert await silent_at(dt.timedelta(minutes=61)) == {"1h": 2, "6h": 0, "24h": 0}
    assert await silent_at(dt.timedelta(hours=7)) == {"1h": 2, "6h": 2, "24h": 0}
    assert await silent_at(dt.timedelta(hours=25)) == {"1h": 2, "6h": 2, "24h": 2}
    # Which ones: one query away for the operator (docs/operations.md).
    quiet = await server.core.store.channels.silent(now + dt.timedelta(minutes=61))
    assert {c["page_id"] for c in quiet} == {ACCOUNT_ID, other.channel["page_id"]}
    assert (await scrape(server.client)).value("igsync_monitor_runs_total", result="ok") >= 4


async def test_webhook_activity_is_written_at_most_once_a_minute(server: RunningServer, tenant: Tenant) -> None:
    channels = server.core.store.channels
    first = await server.client.webhook(messaging_body(text_item("m.act.1", "one")))
    assert first.code == 200
    doc = await channels.get(tenant.channel["id"])
    written = doc["last_webhook_at"]
    assert abs((utcnow() - written).total_seconds()) < 60
    assert (await server.client.webhook(messaging_body(text_item("m.act.2", "two")))).code == 200
    # Within the minute the second item is not written again (one write a minute per process).
    assert (await channels.get(tenant.channel["id"]))["last_webhook_at"] == written
    # $max: an older arrival (another process, late) never moves it back.
    await channels.touch_last_webhook(ObjectId(tenant.channel["id"]), written - dt.timedelta(hours=1))
    assert (await channels.get(tenant.channel["id"]))["last_webhook_at"] == written


async def test_a_burst_of_webhooks_writes_the_activity_mark_once(stores: EmbeddedStores) -> None:
    """Many webhooks arriving while the minute's activity write is in flight do not each write
    it again (a burst of identical updates of one document, every minute, on the embedded store)."""
    updates: list[str] = []

    class Updates(monitoring.CommandListener):
        def started(self, event: monitoring.CommandStartedEvent) -> None:
            if event.command_name == "update" and event.command.get("update") == "channels":
                updates.append(event.command_name)

        def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
            pass

        def failed(self, event: monitoring.CommandFailedEvent) -> None:
            pass

    store = Store(stores.mongo_url or "", f"activity_{ObjectId()}", listeners=[Updates()])
    activity = ChannelActivity(store, Metrics(process_metrics=False), write_every_secs=60)
    try:
        channel_id = ObjectId()
        await store.db.channels.insert_one({"_id": channel_id})
        # Started in one event-loop turn: all of them arrive before the first write returns.
        await asyncio.gather(*(activity.seen(channel_id, time.time()) for _ in range(8)))
        assert len(updates) == 1
        assert (await store.db.channels.find_one({"_id": channel_id}))["last_webhook_at"] is not None
    finally:
        await store.client.drop_database(store.db.name)
        await store.close()


async def test_stored_duplicates_are_measured(server: RunningServer, tenant: Tenant) -> None:
    """igsync_duplicates_stored counts the failure dedup exists to prevent: one send stored
    as an app/AI message *and* as an unabsorbed echo — over the last hour, each group once,
    reading only what is new since the previous run (a virtual clock drives the runs)."""
    monitor = server.core.monitor
    await monitor.stop()
    window = server.core.settings.dedup_window_secs
    # The background run at start read up to the real clock; the test's runs use their own.
    monitor.duplicates = DuplicateTally(lookback_secs=3600, window_secs=window)
    assert (await server.client.webhook(messaging_body(text_item("m.dup.0", "hi")))).code == 200
    conversation = await server.core.store.conversations.find_by_customer(ObjectId(tenant.channel["id"]), CUSTOMER_A)
    messages = server.core.store.messages
    t0 = utcnow() - dt.timedelta(minutes=30)

    async def stored(content: str, source: str, *, at: float, conversation_id: ObjectId | None = None) -> None:
        """A message stored ``at`` seconds after t0."""
        doc = {
            "_id": ObjectId(),
            "channel_id": ObjectId(tenant.channel["id"]),
            "conversation_id": conversation_id or conversation["_id"],
            "mid": None,
            "mids": [],
            "content": content,
            "content_hash": content,
            "type": "AI" if source == "ai" else "support",
            "source": source,
            "sent_at": t0,
            "created_at": t0 + dt.timedelta(seconds=at),
        }
        await messages.insert(doc)

    async def gauge(at: float) -> float:
        assert await monitor.refresh(now=t0 + dt.timedelta(seconds=at))
        return (await scrape(server.client)).value("igsync_duplicates_stored")

    assert await gauge(0) == 0
    await stored("Your order shipped", "ai", at=1)
    await stored("Your order shipped", "instagram_direct", at=2.5)  # its echo, stored again
    assert await gauge(60) == 1
    # Not duplicates: the same text far outside the dedup window, another conversation,
    # two messages typed in the Instagram app.
    await stored("See you", "app", at=100)
    await stored("See you", "instagram_direct", at=100 + window + 5)
    await stored("Thanks", "app", at=110)
    await stored("Thanks", "instagram_direct", at=111, conversation_id=ObjectId())
    await stored("ok", "instagram_direct", at=120)
    await stored("ok", "instagram_direct", at=121)
    assert await gauge(300) == 1
    # A pair straddling two runs is found once: its first copy before the run, the echo after.
    await stored("Tracking number", "ai", at=295)
    assert await gauge(310) == 1
    await stored("Tracking number", "instagram_direct", at=305)
    assert await gauge(330) == 2
    assert await gauge(400) == 2  # nothing new: nothing counted twice
    # A new process reads the whole hour on its first run and agrees.
    fresh = DuplicateTally(lookback_secs=3600, window_secs=window)
    assert await fresh.refresh(server.core.store, t0 + dt.timedelta(seconds=400)) == 2
    # An hour after the first pair, it ages out; the second pair is still inside the hour.
    assert await gauge(3602.5 + 10) == 1
    assert await gauge(3905 + 10) == 0


async def test_periodic_checks_run_by_themselves(settings: Settings) -> None:
    running = await start_server(settings.replace(monitor_interval_secs=0.05))
    try:

        async def runs() -> float:
            return (await scrape(running.client)).value("igsync_monitor_runs_total", result="ok")

        await wait_for(lambda: _at_least(runs(), 3), timeout=20)
        metrics = await scrape(running.client)
        assert metrics.value("igsync_ready") == 1  # nobody called /readyz: the loop did
        assert metrics.value("igsync_monitor_runs_total", result="failed") == 0
    finally:
        await stop_server(running)


async def _at_least(value: Any, minimum: float) -> bool:
    return await value >= minimum


def test_monitor_interval_setting() -> None:
    assert Settings.from_env({"IGSYNC_MONITOR_INTERVAL_SECS": "2.5"}).monitor_interval_secs == 2.5
    assert Settings().monitor_interval_secs == 30.0
    for bad in ("0", "-1"):
        with pytest.raises(ConfigError, match="IGSYNC_MONITOR_INTERVAL_SECS"):
            Settings.from_env({"IGSYNC_MONITOR_INTERVAL_SECS": bad})


async def test_websocket_series_move_with_real_sockets(server: RunningServer, tenant: Tenant) -> None:
    """Sockets, delivery latency and disconnects, from real WebSocket clients of /ws."""
    await server.core.monitor.stop()
    client = server.client
    before = await scrape(client)
    sockets = [await WsClient.connect(server.base_url, tenant.token) for _ in range(2)]
    for ws in sockets:
        await ws.subscribe(channel_id=tenant.channel["id"])
    opened = await scrape(client)
    assert opened.value("igsync_ws_connections") == 2
    assert (
        opened.delta(before, "igsync_http_requests_total", handler="WebSocketHandler", method="GET", status="1xx") == 2
    )

    assert (await client.webhook(messaging_body(text_item("m.ws.1", "hello sockets")))).code == 200
    for ws in sockets:
        # A customer message is three events: chat_message, new_customer_message, conversation_updated.
        assert [e["event"] for e in await ws.events(3)] == [
            "chat_message",
            "new_customer_message",
            "conversation_updated",
        ]
    # Each event is observed once per socket it was written to, when it was flushed.
    delivered = await wait_for(
        lambda: _delta_at_least(client, opened, "igsync_event_delivery_seconds_count", 6), timeout=10
    )
    assert delivered.delta(opened, "igsync_event_delivery_seconds_count") == 6
    assert delivered.delta(opened, "igsync_event_delivery_seconds_sum") > 0
    # A redelivered mid publishes nothing: no delivery observed.
    assert (await client.webhook(messaging_body(text_item("m.ws.1", "hello sockets")))).code == 200
    for ws in sockets:
        assert await ws.quiet() == []
    assert (await scrape(client)).delta(opened, "igsync_event_delivery_seconds_count") == 6

    for ws in sockets:
        ws.close()
    closed = await wait_for(lambda: _gauge_is(client, "igsync_ws_connections", 0), timeout=10)
    assert closed.delta(before, "igsync_ws_disconnects_total", reason="client_closed") == 2
    assert closed.delta(before, "igsync_ws_disconnects_total", reason="slow_consumer") == 0


async def _delta_at_least(client: Any, before: Any, name: str, minimum: float, **labels: str) -> Any:
    now = await scrape(client)
    return now if now.delta(before, name, **labels) >= minimum else None


async def _gauge_is(client: Any, name: str, value: float) -> Any:
    now = await scrape(client)
    return now if now.value(name) == value else None


async def test_a_redis_restart_costs_no_failed_command(tmp_path: Path) -> None:
    """A pooled connection from before a Redis restart is retried once on a fresh one: the
    readiness checks keep connections open, and a restart must not fail the next command
    (nor count as a Redis failure)."""
    own = EmbeddedStores(tmp_path / "own-redis", mongo=False, lock=False).start()
    metrics = Metrics(process_metrics=False)
    client = RedisTopology(own.redis_url or "").client(timeout_ms=1500, metrics=metrics)
    try:
        assert await client.ping()
        own.stop_redis()
        own.start_redis()  # same port, a new server: the pooled connection is dead
        assert await client.set("after-restart", b"1")
        assert await client.get("after-restart") == b"1"
        failures = metrics.redis_commands["set"][1]
        assert failures._value.get() == 0
        own.stop_redis()
        with pytest.raises(RedisConnectionError):  # down is still down, and counted
            await client.get("after-restart")
        assert metrics.redis_commands["get"][1]._value.get() == 1
    finally:
        await client.aclose()
        own.stop()


async def test_events_media_and_profile_series(stores: EmbeddedStores, tmp_path: Path) -> None:
    """Issue 7's series, through /metrics: an orphan event, a media download, a profile look-up."""
    async with events_env(stores, tmp_path) as env:
        client = env.client
        before = await scrape(client)
        assert before.value("igsync_orphan_events_total", kind="reaction") == 0
        assert before.value("igsync_media_jobs_total", outcome="completed") == 0
        assert before.value("igsync_profile_lookups_total", outcome="fetched") == 0

        # A reaction to a message never stored: kept as an orphan, counted once.
        reaction = messaging_body(
            {
                "sender": {"id": CUSTOMER_A},
                "recipient": {"id": ACCOUNT_ID},
                "timestamp": 1763460660000,
                "reaction": {"mid": "m.never.stored", "action": "react", "reaction": "love", "emoji": "x"},
            }
        )
        assert body_of(await client.webhook(reaction))["message_id"] is None
        assert (await scrape(client)).delta(before, "igsync_orphan_events_total", kind="reaction") == 1

        # A new customer with an image: one profile look-up (fetched) and one media job (completed).
        env.graph.profile(CUSTOMER_A, name="Ana")
        url = env.cdn.add("photo", body=JPEG, content_type="image/jpeg")
        assert (await env.post(fixture_with("customer_image", urls=[url], mid="m.obs.image")))["status"] == "success"
        after = await wait_for(
            lambda: _delta_at_least(client, before, "igsync_media_jobs_total", 1, outcome="completed"), timeout=20
        )
        await wait_for(
            lambda: _delta_at_least(client, before, "igsync_profile_lookups_total", 1, outcome="fetched"), timeout=20
        )
        final = await scrape(client)
        assert final.delta(before, "igsync_media_jobs_total", outcome="completed") == 1
        assert final.delta(before, "igsync_media_jobs_total", outcome="failed") == 0
        assert final.delta(before, "igsync_profile_lookups_total", outcome="fetched") == 1
        assert after.delta(before, "igsync_orphan_events_total", kind="reaction") == 1
