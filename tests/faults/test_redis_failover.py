"""A Redis failover under load costs at most a reconnect (issue 18, API.md §7).

On a real 3-master + 3-replica Cluster and on a master + replica + 3 Sentinels, each started
on loopback for the test (tests/support/redis_topologies.py): igsync as a real process, a
Meta-like sender and resuming sockets, then the master that holds the channel's event log is
SIGKILLed and its replica promoted. Counted: webhooks answered anything but 200, acknowledged
messages lost or stored twice, events missed by a socket (a ``resync_required`` and a reload is
allowed — the promoted replica may lack the log's tail — a gap or a reused seq is not).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from server.realtime.eventlog import keys
from tests.faults.harness import FaultRig, MetaSender, ResumingSocket, settle, wait_acknowledged
from tests.support.helpers import wait_for
from tests.support.redis_topologies import ClusterTopology, SentinelTopology

RATE_PER_SEC = 20.0
SOCKETS = 2


@pytest.mark.slow
@pytest.mark.timeout(240)
@pytest.mark.parametrize("kind", ["cluster", "sentinel"])
async def test_a_master_killed_under_load_costs_a_reconnect(kind: str, tmp_path: Path) -> None:
    loop = asyncio.get_running_loop()
    topology = ClusterTopology(tmp_path / kind) if kind == "cluster" else SentinelTopology(tmp_path / kind)
    await loop.run_in_executor(None, topology.start)
    rig = FaultRig(tmp_path, redis_topology=topology)
    sockets = [ResumingSocket(rig) for _ in range(SOCKETS)]
    sender = MetaSender(rig, rate_per_sec=RATE_PER_SEC)
    try:
        await loop.run_in_executor(None, rig.start)
        await rig.connect()
        for socket in sockets:
            socket.start()
        await wait_for(lambda: all(s.epoch for s in sockets), timeout=20)
        sender.start()
        await wait_acknowledged(sender, 30)

        # The master that holds this channel's log (on a cluster: its shard's master).
        if isinstance(topology, ClusterTopology):
            master = topology.master_of(keys(rig.channel_id)[0])
        else:
            master = topology.current_master()
        master.kill()
        await loop.run_in_executor(None, topology.wait_promoted, master)
        await wait_acknowledged(sender, 40, timeout=90)  # the load flows on after the promotion
        await sender.stop(timeout=90)
        await settle(sockets, sender)
        for socket in sockets:
            await socket.stop()
        account = await rig.account(sender, sockets)
        print(f"\nredis {kind} failover: {account.summary()}")

        assert set(account.statuses) == {200}, f"every webhook answered 200: {account.summary()}"
        assert account.lost == [] and account.duplicated == [], account.summary()
        assert account.missed == {}, account.summary()
        assert account.gaps == 0 and account.conflicts == 0, account.summary()
        assert account.acknowledged == sender.sent
        # A reconnect at most: the sockets stayed open; the failover was noticed (each socket
        # was told to resync once its log was renewed), not silently crossed.
        assert account.reconnects == 0, account.summary()
        assert all(s.resyncs >= 1 for s in sockets), account.summary()
    finally:
        await sender.abort()
        for socket in sockets:
            await socket.abort()
        rig.stop()
        await loop.run_in_executor(None, topology.stop)
