"""What ``igsync serve --workers N`` adds on one machine: the same webhook load against 1 and
N workers, in one run (the one-worker figure is the baseline of the ratio).

Run:  .venv/bin/python -m bench.workers [--workers 2] [--items 3000] [--concurrency 32]

Both servers are real ``igsync serve`` processes (a supervisor and its workers) on the same
embedded SecantusDB + Redis, each with a database of its own, loaded by ``bench.ingest``'s mixed
webhooks (known customers' texts, owner echoes, redeliveries) after every customer was seen
once. Prints req/s, p50/p99, and CPU per request of the igsync processes (supervisor and
workers together) and of the store, so the ratio shows whether igsync or the store is the limit.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO

from bench.ingest import HOST, admin_connect, cpu_secs, env_for, requests_for, webhook_body, workload
from bench.loadgen import run_load
from server.app.embedded import EmbeddedStores, free_port

ROOT = Path(__file__).resolve().parent.parent


def tree(pid: int) -> list[int]:
    """The process and its children (the workers of a supervisor)."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        children = []
    return [pid, *(int(c) for c in children)]


def start_igsync(
    stores: EmbeddedStores, port: int, workers: int, workdir: Path
) -> tuple[subprocess.Popen[bytes], IO[str]]:
    env = env_for(stores, port, f"bench_workers_{workers}", {})
    log = open(workdir / f"workers-{workers}.log", "w")
    command = [sys.executable, "-m", "server", "serve", "--workers", str(workers)]
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT), log


async def measure(stores: EmbeddedStores, workers: int, args: argparse.Namespace, workdir: Path) -> dict[str, float]:
    port = free_port()
    proc, log = start_igsync(stores, port, workers, workdir)
    try:
        deadline = time.monotonic() + 60
        while len(tree(proc.pid)) < workers + (1 if workers > 1 else 0) or not await _healthy(port):
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"igsync --workers {workers} did not start; see {log.name}")
            await asyncio.sleep(0.1)
        await admin_connect(port)
        customers = [f"62{n:014d}" for n in range(args.customers)]
        warm = [webhook_body(f"w.{workers}.{i}", "hello", c, echo=False, ts_ms=int(time.time() * 1000))
                for i, c in enumerate(customers)]  # fmt: skip
        await run_load(HOST, port, requests_for(warm, port), args.concurrency)
        bodies = workload(args.items, customers, echo_share=0.3, redelivery_share=0.1, seed=7, tag=f"w{workers}")
        pids = tree(proc.pid)
        before = [cpu_secs(p) for p in pids], cpu_secs(stores.mongo_pid)
        result = await run_load(HOST, port, requests_for(bodies, port), args.concurrency)
        igsync_cpu = sum(cpu_secs(p) for p in pids) - sum(before[0])
        store_cpu = cpu_secs(stores.mongo_pid) - before[1]
        print(
            f"--workers {workers}: {result.summary()}\n"
            f"    CPU per request: igsync {igsync_cpu / args.items * 1000:.2f} ms "
            f"(over {len(pids)} processes), store {store_cpu / args.items * 1000:.2f} ms"
        )
        return {"rps": result.rate, "igsync_cpu_ms": igsync_cpu / args.items * 1000}
    finally:
        proc.terminate()
        proc.wait(60)
        log.close()


async def _healthy(port: int) -> bool:
    try:
        reader, writer = await asyncio.open_connection(HOST, port)
    except OSError:
        return False
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    answer = await reader.read(64)
    writer.close()
    return b" 200 " in answer


async def main(args: argparse.Namespace) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="igsync-workers-"))
    stores = EmbeddedStores(workdir / "stores", lock=False).start()
    try:
        one = await measure(stores, 1, args, workdir)
        many = await measure(stores, args.workers, args, workdir)
        print(f"ratio --workers {args.workers} / --workers 1: {many['rps'] / one['rps']:.2f}x req/s")
    finally:
        stores.stop()


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--items", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--customers", type=int, default=200)
    return parser.parse_args()


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
