"""igsync's own CPU per webhook against the floor's, the store not the limit — repeated.

    .venv/bin/python -m bench.paced_cpu [--runs 2] [--rate 60] [--items 1200] [--client-bulk-write]

The paced phase of ``bench/ingest.py`` alone (issue 18, item 7: igsync ≤ 2× the floor): the
floor (HMAC + JSON + one ``insert_one``) and igsync, each a separate process on the same
embedded stores, take the same mix (customer texts, owner echoes, redeliveries) at a rate the
store carries easily, after 200 customers were seen once; the CPU each server process used,
per request, and the ratio. On a shared VM one run moves by ±20 %, so it runs ``--runs``
times, the floor and igsync back to back each time. ``--client-bulk-write``: igsync sends what
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


async def server_cpu_ms(kind: str, stores: EmbeddedStores, workdir: Path, args: argparse.Namespace, run: int) -> float:
    """CPU per request (ms) of one server process under the paced mix."""
    port = free_port()
    extra = MONGODB_8_ENV if args.client_bulk_write and kind == "igsync" else {}
    server = BenchServer(kind, env_for(stores, port, f"paced_{kind}_{run}", extra), workdir)
    try:
        if kind == "igsync":
            await admin_connect(port)
        now_ms = int(time.time() * 1000)
        warm = [webhook_body(f"warm.{run}.{i}", "hello", c, echo=False, ts_ms=now_ms) for i, c in enumerate(CUSTOMERS)]
        await run_load(HOST, port, requests_for(warm, port), 32)
        bodies = workload(
            args.items, CUSTOMERS, echo_share=0.3, redelivery_share=0.1, seed=107 + run, tag=f"{kind}{run}"
        )
        meter = CpuMeter(server.proc.pid, stores.mongo_pid)
        result = await run_load(HOST, port, requests_for(bodies, port), 32, rate=args.rate)
        assert result.statuses == {200: args.items}, result.statuses
        return meter.per_request_ms(args.items)[0]
    finally:
        server.stop()


async def main(args: argparse.Namespace) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="igsync-paced-"))
    stores = EmbeddedStores(workdir / "stores", lock=False).start()
    ratios = []
    try:
        for run in range(args.runs):
            floor = await server_cpu_ms("floor", stores, workdir, args, run)
            igsync = await server_cpu_ms("igsync", stores, workdir, args, run)
            ratios.append(igsync / floor)
            print(
                f"run {run + 1}: CPU per request at {args.rate:.0f} req/s: floor {floor:.2f} ms, "
                f"igsync {igsync:.2f} ms; igsync/floor {igsync / floor:.2f} (aim <= 2)",
                flush=True,
            )
    finally:
        stores.stop()
    print(f"igsync/floor over {args.runs} runs: {min(ratios):.2f} – {max(ratios):.2f}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--rate", type=float, default=60.0, help="req/s, well below what the store carries")
    parser.add_argument("--items", type=int, default=1200, help="webhooks per server per run")
    parser.add_argument("--client-bulk-write", action="store_true", help="igsync sends MongoDB 8.0+'s commands")
    return parser.parse_args(argv)


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
