"""igsync's own CPU per webhook against the floor's, the store not the limit — repeated.

    .venv/bin/python -m bench.paced_cpu [--runs 2] [--rate 60] [--items 1200] [--client-bulk-write]

The paced phase of ``bench/ingest.py`` alone (issue 18, item 7: igsync ≤ 2× the floor): the
floor (HMAC + JSON + one ``insert_one``) and igsync, each a separate process on the same
embedded stores, take the same mix (customer texts, owner echoes, redeliveries) at a rate the
store carries easily, after 200 customers were seen once; the CPU each server process used,
per request, and the ratio. The floor and igsync take their loads side by side, at the same
time (each at ``--rate``): on a shared VM a 20-second window's CPU moves by ±20 %, and measured
one after the other that noise went into the ratio. It runs ``--runs`` times. ``--client-bulk-write``: igsync sends what
a MongoDB 8.0+ deployment gets (see ``bench/ingest.py``), for measuring only.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from bench.ingest import (
    HOST,
    MONGODB_8_ENV,
    BenchServer,
    CpuMeter,
    admin_connect,
    env_for,
    requests_for,
    webhook_body,
    workload,
)
from bench.loadgen import run_load
from server.app.embedded import EmbeddedStores, free_port

CUSTOMERS = [f"62{n:014d}" for n in range(200)]


class PacedServer:
    """One server process, warmed up (200 customers seen once), ready for the paced mix."""

    def __init__(self, kind: str, stores: EmbeddedStores, workdir: Path, args: argparse.Namespace, run: int) -> None:
        self.kind = kind
        self.port = free_port()
        extra = MONGODB_8_ENV if args.client_bulk_write and kind == "igsync" else {}
        self.server = BenchServer(kind, env_for(stores, self.port, f"paced_{kind}_{run}", extra), workdir)
        self.bodies = workload(
            args.items, CUSTOMERS, echo_share=0.3, redelivery_share=0.1, seed=107 + run, tag=f"{kind}{run}"
        )

    async def warm(self, run: int) -> None:
        if self.kind == "igsync":
            await admin_connect(self.port)
        now_ms = int(time.time() * 1000)
        warm = [webhook_body(f"warm.{run}.{i}", "hello", c, echo=False, ts_ms=now_ms) for i, c in enumerate(CUSTOMERS)]
        await run_load(HOST, self.port, requests_for(warm, self.port), 32)

    async def paced_cpu_ms(self, rate: float) -> float:
        """CPU per request (ms) of this server process under the paced mix."""
        meter = CpuMeter(self.server.proc.pid, None)
        result = await run_load(HOST, self.port, requests_for(self.bodies, self.port), 32, rate=rate)
        assert result.statuses == {200: len(self.bodies)}, result.statuses
        return meter.per_request_ms(len(self.bodies))[0]


async def one_run(stores: EmbeddedStores, workdir: Path, args: argparse.Namespace, run: int) -> tuple[float, float]:
    """(floor, igsync) CPU per request, both under the same load at the same time: the VM's
    noise (±20 % between two 20-second windows here) then moves both, not one of them."""
    servers = [PacedServer(kind, stores, workdir, args, run) for kind in ("floor", "igsync")]
    try:
        for server in servers:
            await server.warm(run)
        floor, igsync = await asyncio.gather(*(server.paced_cpu_ms(args.rate) for server in servers))
        return floor, igsync
    finally:
        for server in servers:
            server.server.stop()


async def main(args: argparse.Namespace) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="igsync-paced-"))
    stores = EmbeddedStores(workdir / "stores", lock=False).start()
    ratios = []
    try:
        for run in range(args.runs):
            floor, igsync = await one_run(stores, workdir, args, run)
            ratios.append(igsync / floor)
            print(
                f"run {run + 1}: CPU per request at {args.rate:.0f} req/s each: floor {floor:.2f} ms, "
                f"igsync {igsync:.2f} ms; igsync/floor {igsync / floor:.2f} (aim <= 2)",
                flush=True,
            )
    finally:
        stores.stop()
    ratios.sort()
    print(
        f"igsync/floor over {args.runs} runs: {ratios[0]:.2f} – {ratios[-1]:.2f}, median {ratios[len(ratios) // 2]:.2f}"
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--rate", type=float, default=60.0, help="req/s, well below what the store carries")
    parser.add_argument("--items", type=int, default=1200, help="webhooks per server per run")
    parser.add_argument("--client-bulk-write", action="store_true", help="igsync sends MongoDB 8.0+'s commands")
    return parser.parse_args(argv)


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
