"""The randomized dedup test: two igsync processes sharing one MongoDB and one Redis, ≥ 300 seeded
trials of mark-sent / echo / redelivery / equal-text interleavings, a third of them with Redis
stopped. Replay a failure with ``IGSYNC_DEDUP_SEED=<seed printed>``; ``IGSYNC_DEDUP_TRIALS``
changes the count."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
from bson import ObjectId

from models.store import mongo_client
from server.app.embedded import EmbeddedStores, free_port
from tests.support.dedup_harness import (
    Delivery,
    NativePlan,
    WideClient,
    check_trials,
    plan_trials,
    redeliver_everything,
    run_trials,
    seed_design_outcome,
    store_failures,
)
from tests.support.helpers import ACCOUNT_ID, ADMIN_TOKEN, ServerProcessHandle, body_of, server_env
from tests.support.server import make_settings

PROCESSES = 2
BATCHES = 9  # batches 0, 3 and 6 with Redis stopped: (at least) a third of the trials


def test_seed_design_model_shows_both_seed_failures() -> None:
    """The comparison model used by the soak benchmark, on the two cases docs/dedup.md names."""
    [trial] = plan_trials(7, 1)
    send = trial.sends[0]
    send.retry = None
    send.call = Delivery(0.3, 0)
    send.echoes = [Delivery(0.1, 1)]  # the echo beats the mark-sent
    trial.sends, trial.natives = [send], []
    assert seed_design_outcome(trial) == (1, 0), "echo first: the seed stores it twice"
    send.echoes = [Delivery(0.4, 1)]
    trial.natives = [NativePlan("aWdfnative", [Delivery(0.45, 0)])]
    assert seed_design_outcome(trial) == (0, 1), "a repeated text typed in the app is dropped"


@pytest.mark.slow
async def test_randomized_interleavings_across_two_processes(stores, tmp_path: Path) -> None:
    seed = int(os.environ.get("IGSYNC_DEDUP_SEED") or random.randrange(2**31))
    count = int(os.environ.get("IGSYNC_DEDUP_TRIALS") or 300)
    # A Redis of its own, so stopping it touches no other test.
    redis = EmbeddedStores(tmp_path / "redis", mongo=False, lock=False).start()
    # The production store timeout, not the tests' fail-fast 1.5 s: a whole batch in flight
    # overloads the embedded store for seconds on a 2-core machine running two test workers, and
    # this test is about interleavings, not about how a saturated store's queue times out.
    settings = make_settings(stores, tmp_path, redis_url=redis.redis_url, store_timeout_ms=5000)
    processes = [
        ServerProcessHandle(server_env(settings.replace(port=free_port())), tmp_path / f"igsync-{i}.log")
        for i in range(PROCESSES)
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
        assert response.code == 201, response.body
        channel_id = ObjectId(body_of(response)["channel"]["id"])
        trials = plan_trials(seed, count, processes=PROCESSES)
        tally = await run_trials(
            trials,
            clients,
            batch_size=-(-count // BATCHES),
            redis_down_every=3,
            stop_redis=redis.stop_redis,
            start_redis=redis.start_redis,
        )
        problems = await check_trials(db_client[settings.mongo_db], trials, channel_id)
        problems += await redeliver_everything(trials, clients, tally)
        problems += await check_trials(db_client[settings.mongo_db], trials, channel_id)
        failed = sorted({int(p.split()[1].rstrip(":")) for p in problems if p.startswith("trial ")})
        report = "\n".join(
            [
                f"seed={seed} (replay: IGSYNC_DEDUP_SEED={seed}), {count} trials, "
                f"{sum(t.redis_down for t in trials)} with Redis down",
                f"requests={tally.requests} retries={tally.retries} {dict(tally.retry_reasons)} stored={tally.stored} "
                f"duplicates={dict(tally.layers)} mark_sent={dict(tally.mark_sent)}",
                f"503 causes logged: {dict(store_failures(*(p.output() for p in processes)))}",
                *tally.failures[:20],
                *problems[:40],
                *[trials[i].describe() for i in failed[:5]],
            ]
        )
        print(report)
        assert not tally.failures and not problems, report
        assert sum(t.redis_down for t in trials) * 3 >= count
        # Every layer was exercised (cache only while Redis was up).
        assert tally.layers["mid"] and tally.layers["cache"] and tally.layers["database"], report
        assert tally.mark_sent["adopted"] and tally.mark_sent["created"] and tally.mark_sent["idempotent"], report
    finally:
        for process in processes:
            process.kill()
        for client in clients:
            client.close()
        await db_client.drop_database(settings.mongo_db)
        await db_client.close()
        redis.stop()
