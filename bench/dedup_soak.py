"""Dedup soak: the randomized two-process harness of tests/test_dedup_random.py, at 10 000 trials.

Starts its own embedded MongoDB-compatible and Redis servers and N igsync processes, plays
seeded trials (mark-sent + echo in random order, redeliveries to any process, Instagram-app
messages with equal texts, Redis stopped for every third batch), then checks every trial in
MongoDB and prints the counts.

Figures, all from this one run:

* outcomes: stored, duplicates by layer, mark-sent created/adopted, violations (must be 0);
* the seed design on the same schedules (a model of its rules): duplicated and lost messages;
* latency: the echo path and mark-sent against a baseline of the *same schedules* played as
  plain customer messages (no dedup on their path) — ratios p50/p99.

Usage: .venv/bin/python bench/dedup_soak.py [--trials 10000] [--seed N] [--processes 2]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bson import ObjectId  # noqa: E402

from config import Settings  # noqa: E402
from models.store import mongo_client  # noqa: E402
from server.embedded import EmbeddedStores, free_port  # noqa: E402
from tests.dedup_harness import (  # noqa: E402
    Tally,
    WideClient,
    check_trials,
    plan_trials,
    redeliver_everything,
    run_trials,
    seed_design_outcome,
    store_failures,
)
from tests.helpers import (  # noqa: E402
    ACCOUNT_ID,
    ADMIN_TOKEN,
    APP_SECRET,
    INTERNAL_TOKEN,
    VERIFY_TOKEN,
    ServerProcessHandle,
    body_of,
    server_env,
)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def ms(value: float) -> str:
    return f"{value * 1000:.1f} ms"


async def soak(args: argparse.Namespace) -> int:
    seed = args.seed if args.seed is not None else random.randrange(2**31)
    with tempfile.TemporaryDirectory(prefix="igsync-soak-") as tmp:
        stores = EmbeddedStores(Path(tmp) / "stores", lock=False).start()
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
    print("  latency            p50        p99     (ratio to baseline p50 / p99)")
    for name, values in (("customer (baseline)", base), ("echo webhook", echo), ("mark-sent", mark)):
        p50, p99 = percentile(values, 0.5), percentile(values, 0.99)
        ratio = f"{p50 / percentile(base, 0.5):.2f}x / {p99 / percentile(base, 0.99):.2f}x"
        print(f"  {name:<19}{ms(p50):>9}  {ms(p99):>9}     {ratio}")
    if echo and base:
        print(f"  mean echo webhook {ms(statistics.fmean(echo))}, mean baseline {ms(statistics.fmean(base))}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=10_000)
    parser.add_argument("--baseline-trials", type=int, default=1_000)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--batch", type=int, default=60, help="trials run concurrently")
    return asyncio.run(soak(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
