"""Redis Stream delivery: a consumer group reading with XREADGROUP receives every customer
message (the documented ten-line consumer, run for real), and Redis being down only delays it."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import orjson
import redis.asyncio as aioredis

from config import Settings
from server.app.embedded import EmbeddedStores
from server.ops.redis_clients import RedisTopology
from tests.support.helpers import CUSTOMER_A, CUSTOMER_B, echo_item, messaging_body, wait_for
from tests.support.server import make_settings, start_server, stop_server
from tests.support.triggers import FAST_TRIGGERS, MessageSender, connect_with_triggers

STREAM_ONLY = {"http": None, "redis_stream": True}


async def consume(redis: aioredis.Redis, stream: str, group: str, until: int, timeout: float = 10) -> list[Any]:
    """The consumer of docs/triggers.md: read as a group member, handle, acknowledge."""
    seen: dict[str, Any] = {}  # delivery_id → payload: at-least-once, so deduplicate
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while len(seen) < until and loop.time() < deadline:
        batches = await redis.xreadgroup(group, "worker-1", {stream: ">"}, count=10, block=200)
        for _, entries in batches:
            for entry_id, fields in entries:
                seen.setdefault(fields[b"delivery_id"].decode(), orjson.loads(fields[b"payload"]))
                await redis.xack(stream, group, entry_id)
    return list(seen.values())


async def test_a_consumer_group_receives_every_customer_message(stores: Any, tmp_path: Path) -> None:
    stream = f"igsync:triggers:{uuid.uuid4().hex[:8]}"
    settings = make_settings(stores, tmp_path, trigger_stream=stream, trigger_stream_maxlen=1000, **FAST_TRIGGERS)
    # A consumer as the AI service would run one: on the session's topology (a cluster client
    # follows the stream's slot).
    redis: Any = RedisTopology.of(settings).client(timeout_ms=5000)
    await redis.xgroup_create(stream, "ai-workers", id="0", mkstream=True)
    igsync = await start_server(settings)
    try:
        await connect_with_triggers(igsync.client, STREAM_ONLY)
        sender = MessageSender(igsync.client)
        sent = []
        for i in range(5):
            for customer in (CUSTOMER_A, CUSTOMER_B):
                sent.append(f"{customer}:{i}")
                await sender.send(sent[-1], customer=customer)
        assert (await igsync.client.webhook(messaging_body(echo_item("echo-x", "an owner reply")))).code == 200

        payloads = await consume(redis, stream, "ai-workers", until=len(sent))
        assert sorted(p["message"]["content"] for p in payloads) == sorted(sent)
        for customer in (CUSTOMER_A, CUSTOMER_B):
            in_stream_order = [p["message"]["content"] for p in payloads if p["customer"]["instagram_id"] == customer]
            assert in_stream_order == [s for s in sent if s.startswith(customer)], "order per conversation"
        first = payloads[0]
        assert first["event"] == "customer_message"
        assert set(first) == {"event", "delivery_id", "channel", "conversation", "customer", "message"}

        async def all_delivered() -> bool:
            jobs = await igsync.core.store.trigger_jobs.coll.find().to_list(None)
            return len(jobs) == len(sent) and all(j["state"] == "delivered" for j in jobs)

        await wait_for(all_delivered)
        assert await redis.xlen(stream) == len(sent), "no entry for the echo"
        pending = await redis.xpending(stream, "ai-workers")
        assert pending["pending"] == 0
    finally:
        await stop_server(igsync)
        await redis.delete(stream)
        await redis.aclose()


async def test_redis_down_delays_stream_triggers_without_losing_one(stores: Any, tmp_path: Path) -> None:
    own = EmbeddedStores(tmp_path / "redis", mongo=False, redis=True, lock=False).start()
    try:
        settings: Settings = make_settings(
            stores, tmp_path, redis_url=own.redis_url, store_timeout_ms=300, **FAST_TRIGGERS
        )
        igsync = await start_server(settings)
        try:
            await connect_with_triggers(igsync.client, STREAM_ONLY)
            port = int(own.redis_url.rsplit(":", 1)[1].split("/")[0])
            await asyncio.to_thread(own.stop_redis)
            sender = MessageSender(igsync.client)
            await sender.send("while redis is down 1")
            await sender.send("while redis is down 2")

            async def failed_once() -> bool:
                jobs = await igsync.core.store.trigger_jobs.coll.find().to_list(None)
                return any((j.get("last_error") or {}).get("result") == "redis_error" for j in jobs)

            await wait_for(failed_once)
            await asyncio.to_thread(own.start_redis, port)
            redis = aioredis.from_url(own.redis_url)
            try:

                async def arrived() -> list[Any]:
                    entries = await redis.xrange(settings.trigger_stream)
                    return entries if len(entries) >= 2 else []

                entries = await wait_for(arrived, timeout=15)
                contents = [orjson.loads(f[b"payload"])["message"]["content"] for _, f in entries]
                assert contents == ["while redis is down 1", "while redis is down 2"]
            finally:
                await redis.aclose()
        finally:
            await stop_server(igsync)
    finally:
        own.stop()
