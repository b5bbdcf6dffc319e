"""Dedup soak: the randomized two-process harness of tests/dedup/test_random.py, at 10 000 trials.

    .venv/bin/python -m bench.dedup_soak [--trials 10000] [--seed N] [--processes 2] [--batch 30]

Starts its own embedded MongoDB-compatible and Redis servers and N igsync processes, plays
seeded trials (mark-sent + echo in random order, redeliveries to any process, sender retries,
Instagram-app messages with equal texts, Redis stopped for every third batch), redelivers every
mid once more at the end, then checks every trial in MongoDB and prints the counts.

Figures, all from this one run:

* store access: each query the dedup path adds, at 200 and at 5 000 messages (growth means a
  collection scan on the embedded server);
* outcomes: stored, duplicates by layer, mark-sent created/adopted/idempotent, violations (0);
* the seed design on the same schedules (a model of its rules): duplicated and lost messages;
* latency: the echo path and mark-sent against a baseline of the *same schedules* played as
  plain customer messages (no dedup on their path) — ratios p50/p99.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from bson import ObjectId

from config import Settings
from models.messages import with_keys
from models.store import Store, mongo_client
from server.app.embedded import EmbeddedStores, free_port
from server.dedup.pairing import EchoPairing
from tests.support.dedup_harness import (
    Tally,
    WideClient,
    check_trials,
    plan_trials,
    redeliver_everything,
    run_trials,
    seed_design_outcome,
    store_failures,
)
from tests.support.helpers import (
    ACCOUNT_ID,
    ADMIN_TOKEN,
    APP_SECRET,
    INTERNAL_TOKEN,
    VERIFY_TOKEN,
    ServerProcessHandle,
    body_of,
    echo_item,
    messaging_body,
    server_env,
    text_item,
)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def ms(value: float) -> str:
    return f"{value * 1000:.1f} ms"


async def per_op_ms(fn: Callable[[int], Awaitable[Any]], reps: int) -> float:
    started = time.perf_counter()
    for i in range(reps):
        await fn(i)
    return (time.perf_counter() - started) / reps * 1000


async def store_access(url: str, docs: int, reps: int = 100) -> dict[str, float]:
    """Milliseconds per dedup query with ``docs`` messages in the collection."""
    store = Store(url, f"dedup_access_{docs}_{ObjectId()}")
    await store.ensure_indexes()
    channel, conversation = ObjectId(), ObjectId()
    rows = [
        with_keys(
            {
                "_id": ObjectId(),
                "channel_id": channel,
                "conversation_id": conversation,
                "mids": [f"m{i}"],
                "send_id": f"s{i}",
                "source": "instagram_direct",
                "type": "support",
                "sent_at": i,
            }
        )
        for i in range(docs)
    ]
    await store.messages.coll.insert_many(rows)
    messages, pairing = store.messages, EchoPairing(store.echo_pairs, window_secs=30)
    try:
        return {
            "find_by_mid (mid check)": await per_op_ms(lambda i: messages.find_by_mid(channel, f"m{i % docs}"), reps),
            "pairing compare-and-swap": await per_op_ms(
                lambda i: pairing.register_echo(conversation, f"h{i % 50}", f"e{i}"), reps
            ),
            "absorb_mid (echo joins send)": await per_op_ms(
                lambda i: messages.absorb_mid(channel, conversation, f"s{i % docs}", f"m{i % docs}"), reps
            ),
            "adopt (guarded update)": await per_op_ms(
                lambda i: messages.adopt(rows[i % docs], "not-paired", {"type": "AI"}, []), reps
            ),
            "find_collisions (after a collision)": await per_op_ms(
                lambda i: messages.find_collisions(channel, conversation, [f"m{i % docs}"], f"s{i % docs}"), reps
            ),
        }
    finally:
        await store.client.drop_database(store.db.name)
        await store.close()


async def best_of(runs: int, url: str, docs: int) -> dict[str, float]:
    results = [await store_access(url, docs) for _ in range(runs)]
    return {name: min(r[name] for r in results) for name in results[0]}


async def serial_latency(client: WideClient, n: int) -> dict[str, list[float]]:
    """One request at a time (no queueing): what each path costs, in seconds."""
    out: dict[str, list[float]] = {k: [] for k in ("customer", "mark-sent", "echo absorbed", "app message", "adopt")}

    async def timed(name: str, call: Awaitable[Any]) -> Any:
        response = await call
        assert response.code in (200, 201), (name, response.code, response.body)
        out[name].append(response.request_time)
        return response

    for i in range(n):
        customer = f"65{i:013d}"
        mid = f"aWdfserial{i}"
        await timed("customer", clients_webhook(client, text_item(f"{mid}c", "hello?", sender=customer)))
        body = {"account_id": ACCOUNT_ID, "customer_instagram_id": customer, "content": "hi!", "type": "AI"}
        await timed("mark-sent", client.post("/api/v1/messages/mark-sent", body, token=INTERNAL_TOKEN))
        await timed("echo absorbed", clients_webhook(client, echo_item(f"{mid}e", "hi!", customer=customer)))
        await timed("app message", clients_webhook(client, echo_item(f"{mid}a", "typed", customer=customer)))
        await clients_webhook(client, echo_item(f"{mid}f", "echo first", customer=customer))
        body = {**body, "content": "echo first"}
        await timed("adopt", client.post("/api/v1/messages/mark-sent", body, token=INTERNAL_TOKEN))
    return out


def clients_webhook(client: WideClient, item: dict[str, Any]) -> Awaitable[Any]:
    return client.webhook(messaging_body(item))


async def soak(args: argparse.Namespace) -> int:
    seed = args.seed if args.seed is not None else random.randrange(2**31)
    with tempfile.TemporaryDirectory(prefix="igsync-soak-") as tmp:
        stores = EmbeddedStores(Path(tmp) / "stores", lock=False).start()
        await store_access(stores.mongo_url, 200, reps=20)  # warm-up
        # Best of three per size: the machine is shared, and a scan shows in every run.
        small, large = await best_of(3, stores.mongo_url, 200), await best_of(3, stores.mongo_url, 5000)
        print("store access (ms per call, best of 3)   200 msgs   5000 msgs   growth")
        for name in small:
            print(f"  {name:<38}{small[name]:8.2f}   {large[name]:8.2f}   {large[name] / small[name]:5.1f}x")
        settings = Settings(
            host="127.0.0.1",
            port=0,
            mongo_url=stores.mongo_url,
            redis_url=stores.redis_url,
            mongo_db="soak_" + ObjectId().__str__(),
            data_dir=tmp,
            app_secret=APP_SECRET,
            verify_token=VERIFY_TOKEN,
            admin_token=ADMIN_TOKEN,
            internal_tokens=(INTERNAL_TOKEN,),
            store_timeout_ms=3000,
            channel_cache_secs=5.0,
        )
        processes = [
            ServerProcessHandle(
                server_env(settings.replace(port=free_port()), IGSYNC_LOG_LEVEL="WARNING"), Path(tmp) / f"p{i}.log"
            )
            for i in range(args.processes)
        ]
        clients = [WideClient(p.base_url) for p in processes]
        db_client = mongo_client(settings.mongo_url)

        def abort(signum: int, _frame: Any) -> None:
            # Ctrl-C / SIGTERM mid-run: stop exactly what this run started, then leave.
            for process in processes:
                process.kill()
            stores.stop()
            os._exit(128 + signum)

        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, abort)
        try:
            for process in processes:
                process.start()
            response = await clients[0].post(
                "/api/v1/channels",
                {"page_id": ACCOUNT_ID, "username": "shop", "owner": {"id": 1, "email": "o@example.com"}},
                token=ADMIN_TOKEN,
            )
            channel_id = ObjectId(body_of(response)["channel"]["id"])

            def progress(done: int, elapsed: float) -> None:
                if done % (args.batch * 10) < args.batch or done == args.trials:
                    print(f"  {done} trials, {elapsed:.0f} s", flush=True)

            serial = await serial_latency(clients[0], args.serial)
            base50 = percentile(serial["customer"], 0.5)
            base99 = percentile(serial["customer"], 0.99)
            print(f"serial latency, one request at a time, n={args.serial}   p50        p99     ratio p50 / p99")
            for name, values in serial.items():
                p50, p99 = percentile(values, 0.5), percentile(values, 0.99)
                print(f"  {name:<40}{ms(p50):>9}  {ms(p99):>9}   {p50 / base50:.2f}x / {p99 / base99:.2f}x")
            # Baseline: the same schedule shape, every request a plain customer message.
            baseline_trials = plan_trials(seed + 1, args.baseline_trials, processes=args.processes)
            print(f"baseline: {len(baseline_trials)} trials as plain customer messages", flush=True)
            baseline = await run_trials(baseline_trials, clients, batch_size=args.batch, as_customer=True)

            trials = plan_trials(seed, args.trials, processes=args.processes)
            print(f"soak: {len(trials)} trials, seed {seed}, {args.processes} processes", flush=True)
            started = time.monotonic()
            tally = await run_trials(
                trials,
                clients,
                batch_size=args.batch,
                redis_down_every=3,
                stop_redis=stores.stop_redis,
                start_redis=stores.start_redis,
                progress=progress,
            )
            elapsed = time.monotonic() - started
            problems = await check_trials(db_client[settings.mongo_db], trials, channel_id)
            problems += await redeliver_everything(trials, clients, tally)
            problems += await check_trials(db_client[settings.mongo_db], trials, channel_id)
            report(seed, trials, tally, baseline, problems, elapsed)
            print(f"  503 causes logged by the processes: {dict(store_failures(*(p.output() for p in processes)))}")
            return 1 if problems or tally.failures else 0
        finally:
            for process in processes:
                process.kill()
            for client in clients:
                client.close()
            await db_client.close()
            stores.stop()


def report(seed: int, trials: list, tally: Tally, baseline: Tally, problems: list[str], elapsed: float) -> None:
    sends = sum(len(t.sends) for t in trials)
    sender_retries = sum(1 for t in trials for s in t.sends if s.retry is not None)
    natives = sum(len(t.natives) for t in trials)
    with_mids = sum(len(t.sends) for t in trials if t.sends[0].with_mids)
    down = sum(t.redis_down for t in trials)
    seed_dups, seed_lost = map(sum, zip(*(seed_design_outcome(t) for t in trials), strict=True))
    echo, mark, base = tally.latencies["echo"], tally.latencies["mark_sent"], baseline.latencies["customer"]
    print()
    print(f"igsync dedup soak: {len(trials)} trials, seed {seed}, {down} with Redis down, {elapsed:.0f} s")
    print(
        f"  schedule: {sends} sends ({with_mids} with mids, {sender_retries} called twice), "
        f"{natives} Instagram-app messages"
    )
    retries = f"retries {tally.retries} {dict(tally.retry_reasons)}"
    print(
        f"  requests: {tally.requests} ({len(mark)} mark-sent, {len(echo)} webhooks incl. late redeliveries), {retries}"
    )
    print(f"  webhooks: stored {tally.stored}, duplicates {dict(sorted(tally.layers.items()))}")
    print(f"  mark-sent: {dict(sorted(tally.mark_sent.items()))}")
    print(f"  violations: {len(problems)} (request failures: {len(tally.failures)})")
    for line in (tally.failures + problems)[:20]:
        print(f"    {line}")
    print(
        f"  seed design on the same schedules (model): {seed_dups} duplicated outbound, {seed_lost} lost app messages"
    )
    print("  latency under the soak's load (queueing included)   p50        p99     ratio to baseline p50 / p99")
    for name, values in (("customer (baseline)", base), ("echo webhook", echo), ("mark-sent", mark)):
        p50, p99 = percentile(values, 0.5), percentile(values, 0.99)
        ratio = f"{p50 / percentile(base, 0.5):.2f}x / {p99 / percentile(base, 0.99):.2f}x"
        print(f"  {name:<49}{ms(p50):>9}  {ms(p99):>9}     {ratio}")
    if echo and base:
        print(f"  mean echo webhook {ms(statistics.fmean(echo))}, mean baseline {ms(statistics.fmean(base))}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=10_000)
    parser.add_argument("--baseline-trials", type=int, default=1_000)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--batch", type=int, default=30, help="trials run concurrently")
    parser.add_argument("--serial", type=int, default=200, help="rounds of the one-at-a-time latency probe")
    return asyncio.run(soak(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
