"""Fault injection: under a steady Meta-like load with resuming sockets, kill, freeze or stop
each part and count what was lost. Every count must be 0: no acknowledged webhook lost, none
stored twice, no event missed by a resumed socket (a ``resync_required`` and a reload is
allowed), no answer but 200, 503 or "no answer" (which Meta retries).

Each scenario starts its own stores and igsync process (tests/faults/harness.py), so that
killing them touches no other test. The figures each run prints are in docs/reliability.md.
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import pytest

from tests.faults.harness import FaultRig, MetaSender, ResumingSocket, settle, wait_acknowledged
from tests.support.helpers import wait_for

RATE_PER_SEC = 25.0
SOCKETS = 2


async def _inject(rig: FaultRig, sender: MetaSender, fault: str) -> None:
    loop = asyncio.get_running_loop()
    # Restarts block while the process comes up: off the loop, so the load goes on meanwhile.
    if fault == "store_killed":
        await loop.run_in_executor(None, rig.kill_mongo)
    elif fault == "redis_killed":
        await loop.run_in_executor(None, rig.kill_redis)
    elif fault in ("store_frozen", "redis_frozen"):
        which = "mongo" if fault == "store_frozen" else "redis"
        pid = rig.freeze(which)
        try:
            # Frozen until the load has felt it: a few retried answers (503s for the store;
            # for Redis, webhooks still answer 200 — events go local — so a count of them).
            if which == "mongo":
                await wait_for(lambda: sender.statuses[503] >= 5, timeout=30)
            else:
                await wait_acknowledged(sender, 25)
        finally:
            import os

            os.kill(pid, signal.SIGCONT)
    elif fault in ("igsync_sigterm", "igsync_sigkill"):
        sig = signal.SIGTERM if fault == "igsync_sigterm" else signal.SIGKILL
        code = await loop.run_in_executor(None, rig.kill_igsync, sig)
        assert code == (0 if sig == signal.SIGTERM else -signal.SIGKILL), rig.handle.output() if rig.handle else ""
        await loop.run_in_executor(None, rig.start_igsync)
    else:
        raise ValueError(fault)


FAULTS = ["store_killed", "store_frozen", "redis_killed", "redis_frozen", "igsync_sigterm", "igsync_sigkill"]


@pytest.mark.slow
@pytest.mark.timeout(240)
@pytest.mark.parametrize("fault", FAULTS)
async def test_nothing_acknowledged_is_lost(fault: str, tmp_path: Path) -> None:
    rig = FaultRig(tmp_path)
    await asyncio.get_running_loop().run_in_executor(None, rig.start)
    sockets = [ResumingSocket(rig) for _ in range(SOCKETS)]
    sender = MetaSender(rig, rate_per_sec=RATE_PER_SEC)
    try:
        await rig.connect()
        for socket in sockets:
            socket.start()
        await wait_for(lambda: all(s.epoch for s in sockets), timeout=20)
        sender.start()
        await wait_acknowledged(sender, 40)
        await _inject(rig, sender, fault)
        await wait_acknowledged(sender, 40, timeout=90)  # the load flows again after the fault
        await sender.stop(timeout=90)
        await settle(sockets, sender)
        for socket in sockets:
            await socket.stop()
        account = await rig.account(sender, sockets)
        print(f"\n{fault}: {account.summary()}")
        assert account.lost == [], account.summary()
        assert account.duplicated == [], account.summary()
        assert account.missed == {}, account.summary()
        assert not account.bad_statuses, account.summary()
        assert account.acknowledged == sender.sent
    finally:
        await sender.abort()
        for socket in sockets:
            await socket.abort()
        rig.stop()
