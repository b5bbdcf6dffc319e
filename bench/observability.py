"""What observability costs — each instrument against the same work without it, in one run.

    .venv/bin/python -m bench.observability [--ops 3000] [--messages 20000] [--channels 2000]

On this machine's loopback, with the embedded stores:
1. Redis ``GET``: a plain ``redis.asyncio`` client vs :class:`InstrumentedRedis` (timing + labels);
2. MongoDB ``find_one`` by ``_id``: a client without listeners vs one with the
   :class:`MongoCommandMetrics` listener;
3. one log line of a webhook item: the text formatter vs JSON + redaction (what
   ``IGSYNC_LOG_FORMAT=json`` runs);
4. one ``/metrics`` render (all series pre-created): its time and size;
5. the periodic checks (:meth:`OpsMonitor.refresh`): 200 messages / 20 channels as the
   baseline vs ``--messages`` (the stored-duplicates audit must stay flat: it reads the last
   hour through an index, not the collection) and vs ``--channels`` (the silence counts read
   every connected channel once: linear by design).
Prints each figure and the ratio to its baseline.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import logging
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis
from bson import ObjectId

from models.store import Store
from models.timeutil import utcnow
from server.app.embedded import EmbeddedStores
from server.ops import logs
from server.ops.logs import item_fields
from server.ops.metrics import Metrics
from server.ops.monitor import OpsMonitor
from server.ops.redis_clients import RedisTopology
from server.ops.store_metrics import MongoCommandMetrics


async def per_op_us(fn: Callable[[int], Awaitable[Any]], n: int, rounds: int = 5) -> float:
    """Median over ``rounds`` of the mean time per call, in microseconds."""
    samples = []
    for _ in range(rounds):
        started = time.perf_counter()
        for i in range(n):
            await fn(i)
        samples.append((time.perf_counter() - started) / n * 1e6)
    return statistics.median(samples)


def sync_per_op_us(fn: Callable[[int], Any], n: int, rounds: int = 5) -> float:
    samples = []
    for _ in range(rounds):
        started = time.perf_counter()
        for i in range(n):
            fn(i)
        samples.append((time.perf_counter() - started) / n * 1e6)
    return statistics.median(samples)


async def redis_figures(url: str, ops: int) -> tuple[float, float]:
    plain = aioredis.from_url(url)
    instrumented = RedisTopology(url).client(timeout_ms=5000, metrics=Metrics())
    await plain.set("bench:k", b"v")
    try:
        # Interleave the two so machine noise hits both alike.
        base = await per_op_us(lambda i: plain.get("bench:k"), ops)
        with_metrics = await per_op_us(lambda i: instrumented.get("bench:k"), ops)
        base = min(base, await per_op_us(lambda i: plain.get("bench:k"), ops))
        with_metrics = min(with_metrics, await per_op_us(lambda i: instrumented.get("bench:k"), ops))
    finally:
        await plain.aclose()
        await instrumented.aclose()
    return base, with_metrics


async def mongo_figures(url: str, ops: int) -> tuple[float, float]:
    plain = Store(url, "bench_obs_mongo")
    listened = Store(url, "bench_obs_mongo", listeners=[MongoCommandMetrics(Metrics())])
    oid = ObjectId()
    await plain.db.c.insert_one({"_id": oid, "n": 1})
    try:
        base = await per_op_us(lambda i: plain.db.c.find_one({"_id": oid}), ops)
        with_metrics = await per_op_us(lambda i: listened.db.c.find_one({"_id": oid}), ops)
        base = min(base, await per_op_us(lambda i: plain.db.c.find_one({"_id": oid}), ops))
        with_metrics = min(with_metrics, await per_op_us(lambda i: listened.db.c.find_one({"_id": oid}), ops))
    finally:
        await plain.client.drop_database("bench_obs_mongo")
        await plain.close()
        await listened.close()
    return base, with_metrics


def log_figures(ops: int) -> tuple[float, float]:
    record = logging.LogRecord(
        "igsync.webhook",
        logging.INFO,
        __file__,
        1,
        "webhook item: stored direction=%s type=%s message_type=%s channel=%s conversation=%s mid=%s",
        ("customer_to_owner", "customer", "text", ObjectId(), ObjectId(), "aWdfZAG1faXRlbToxOklHTWVzc2FnZAUlEOjE3"),
        None,
    )
    started = time.perf_counter()
    record.__dict__.update(
        item_fields(
            kind="message",
            outcome="stored",
            started=started,
            direction="customer_to_owner",
            channel_id=ObjectId(),
            conversation_id=ObjectId(),
            mid="aWdfZAG1faXRlbToxOklHTWVzc2FnZAUlEOjE3",
            message_id=ObjectId(),
        )
    )
    secrets = ["x" * 32, "y" * 32, "z" * 32, "w" * 32]
    text = logging.Formatter(logs.TEXT_FORMAT)
    json_redacted = logs.formatter("json", secrets)
    return sync_per_op_us(lambda i: text.format(record), ops), sync_per_op_us(
        lambda i: json_redacted.format(record), ops
    )


async def monitor_figure(url: str, messages: int, channels: int, reps: int) -> float:
    """Mean ms of one OpsMonitor.refresh with this many (old) messages and channels."""
    db = f"bench_obs_monitor_{messages}_{channels}"
    store = Store(url, db)
    await store.ensure_indexes()
    old = utcnow() - dt.timedelta(days=3)
    batch: list[dict[str, Any]] = []
    for i in range(messages):
        batch.append(
            {
                "_id": ObjectId(),
                "channel_id": ObjectId(),
                "conversation_id": ObjectId(),
                "mid_keys": [f"bench:{i}"],
                "type": "AI" if i % 2 else "support",
                "source": "ai" if i % 2 else "instagram_direct",
                "content_hash": str(i // 2),
                "created_at": old + dt.timedelta(seconds=i),
                "sent_at": old + dt.timedelta(seconds=i),
            }
        )
        if len(batch) == 1000:
            await store.messages.coll.insert_many(batch)
            batch = []
    if batch:
        await store.messages.coll.insert_many(batch)
    await store.channels.coll.insert_many(
        [
            {"page_id": f"p{i}", "is_connect": True, "created_at": old, "connected_at": old, "last_webhook_at": old}
            for i in range(channels)
        ]
    )

    async def ready() -> dict[str, bool]:
        return {"mongo": True, "redis": True}

    monitor = OpsMonitor(store, Metrics(), ready, interval_secs=30, dedup_window_secs=30)
    assert await monitor.refresh()
    try:
        return await per_op_us(lambda i: monitor.refresh(), reps) / 1000
    finally:
        await store.client.drop_database(db)
        await store.close()


async def main(args: argparse.Namespace) -> None:
    with EmbeddedStores(tempfile.mkdtemp(prefix="igsync-bench-obs-"), lock=False) as stores:
        assert stores.mongo_url and stores.redis_url
        redis_base, redis_inst = await redis_figures(stores.redis_url, args.ops)
        mongo_base, mongo_inst = await mongo_figures(stores.mongo_url, args.ops)
        monitor_small = await monitor_figure(stores.mongo_url, 200, 20, args.reps)
        monitor_messages = await monitor_figure(stores.mongo_url, args.messages, 20, args.reps)
        monitor_channels = await monitor_figure(stores.mongo_url, 200, args.channels, args.reps)
    text_us, json_us = log_figures(args.ops * 10)
    metrics = Metrics()
    render_us = sync_per_op_us(lambda i: metrics.render(), 200)
    size = len(metrics.render())

    rows = [
        ("Redis GET (plain vs InstrumentedRedis)", redis_base, redis_inst, "us"),
        ("MongoDB find_one (no listener vs listener)", mongo_base, mongo_inst, "us"),
        ("webhook item log line (text vs JSON+redact)", text_us, json_us, "us"),
        (f"periodic checks, 200 vs {args.messages} messages (20 ch)", monitor_small, monitor_messages, "ms"),
        (f"periodic checks, 20 vs {args.channels} channels (200 msgs)", monitor_small, monitor_channels, "ms"),
    ]
    print(f"{'measure':52} {'baseline':>12} {'with it':>12} {'ratio':>7}")
    for name, base, value, unit in rows:
        print(f"{name:52} {base:10.1f}{unit} {value:10.1f}{unit} {value / base:6.2f}x")
    print(f"{'/metrics render (all series pre-created)':52} {render_us:10.0f}us {size / 1024:9.1f}KiB")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ops", type=int, default=3000)
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--channels", type=int, default=2000)
    parser.add_argument("--reps", type=int, default=10)
    asyncio.run(main(parser.parse_args()))
