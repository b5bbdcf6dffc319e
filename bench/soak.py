"""Soak: igsync at a steady share of its measured capacity for N minutes; latency and memory
per minute.

Run: ``.venv/bin/python -m bench.soak [--minutes 5] [--share 0.5] [--capacity-items 1500]``.

First a short burst measures what this machine carries (webhooks/s, 32 connections), then a
Meta-like open loop posts signed webhooks at ``share`` of that rate (new mids over 200
customers, 30 % owner echoes, 10 % redeliveries) for ``minutes``. Each minute prints p50 / p99 /
max latency of the answers, the RSS of igsync, SecantusDB and Redis, and the p99 and mean of
igsync's MongoDB command round trips in that minute and igsync's own p99 time per webhook (both
from its own ``/metrics``: how much of the latency is spent inside igsync, and how much of that
waiting for the store). The last line compares
the last minute with the first (ratios): a flat soak has p99 and RSS ratios near 1.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from bench.ingest import HOST, BenchServer, admin_connect, env_for, requests_for, workload
from bench.loadgen import LoadResult, run_load
from server.app.embedded import MONGO_CACHE_MB, EmbeddedStores, free_port


def rss_mib(pid: int | None) -> float:
    """Resident memory of a process, MiB (0 when it is gone)."""
    if not pid:
        return 0.0
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def cpu_secs(pid: int | None) -> float:
    """CPU time (user + system) a process has used so far, seconds (0 when it is gone)."""
    if not pid:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    # utime and stime are the 14th and 15th fields of the line (12th and 13th after the name).
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _one(host: str, port: int, raw: bytes, latencies: list[float], statuses: dict[int, int]) -> None:
    started = time.perf_counter()
    try:
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(raw)
        await writer.drain()
        status_line = await reader.readline()
        status = int(status_line.split()[1])
        writer.close()
    except (OSError, ValueError, IndexError):
        status = 0
    latencies.append(time.perf_counter() - started)
    statuses[status] = statuses.get(status, 0) + 1


# Histograms read whole (every label summed), by the name the per-minute line gives them.
WHOLE_SERIES = {
    "igsync_webhook_duration_seconds": "webhook",
    "igsync_redis_command_duration_seconds": "redis",
    "igsync_gc_pause_seconds": "gc",
}


def store_histogram(port: int) -> dict[str, dict[str, float]]:
    """igsync's MongoDB command durations so far, per command and in all (``"*"``): ``{le:
    count}`` plus ``count`` and ``sum`` — from its own ``/metrics``, so the store's share of the
    latency is measured where igsync waits for it."""
    text = urllib.request.urlopen(f"http://{HOST}:{port}/metrics", timeout=10).read().decode()
    out: dict[str, dict[str, float]] = {"*": {}}
    for family in text_string_to_metric_families(text):
        whole = WHOLE_SERIES.get(family.name)
        if whole is not None:
            # igsync's own time per webhook (verify, store, answer): what the answer waited for
            # inside the process, as opposed to accepting the connection and queueing for the CPU;
            # its Redis round trips and its garbage collector's pauses, all labels summed.
            series = out.setdefault(whole, {})
            for sample in family.samples:
                if sample.name.endswith("_bucket"):
                    key = sample.labels["le"]
                elif sample.name.endswith(("_count", "_sum")):
                    key = sample.name.rsplit("_", 1)[1]
                else:
                    continue
                series[key] = series.get(key, 0.0) + sample.value
            continue
        if family.name != "igsync_mongo_command_duration_seconds":
            continue
        for sample in family.samples:
            if sample.name.endswith("_bucket"):
                key = sample.labels["le"]
            elif sample.name.endswith(("_count", "_sum")):
                key = sample.name.rsplit("_", 1)[1]
            else:
                continue
            for name in ("*", sample.labels["command"]):
                series = out.setdefault(name, {})
                series[key] = series.get(key, 0.0) + sample.value
    return out


def store_minute(before: dict[str, float], after: dict[str, float]) -> tuple[float, float, int]:
    """(p99 ms of one store command, mean ms, commands) between two scrapes of one series;
    the p99 is the upper bound of its histogram bucket."""
    count = after.get("count", 0.0) - before.get("count", 0.0)
    if count <= 0:
        return 0.0, 0.0, 0
    mean_ms = (after.get("sum", 0.0) - before.get("sum", 0.0)) / count * 1000
    bounds = sorted((float(le), after[le] - before.get(le, 0.0)) for le in after if le not in ("count", "sum"))
    p99 = next((le for le, n in bounds if n >= 0.99 * count), float("inf"))
    return p99 * 1000, mean_ms, int(count)


def slowest_bound(before: dict[str, float], after: dict[str, float]) -> float:
    """The upper bound (ms) of the slowest command between two scrapes: the first bucket
    holding them all. A store that stalls now and then shows here long before its p99 moves."""
    count = after.get("count", 0.0) - before.get("count", 0.0)
    bounds = sorted((float(le), after[le] - before.get(le, 0.0)) for le in after if le not in ("count", "sum"))
    return next((le for le, n in bounds if count and n >= count), float("inf")) * 1000


def slowest_command(before: dict[str, dict[str, float]], after: dict[str, dict[str, float]]) -> str:
    """The command that took the most store time in the minute, with its p99 and mean."""
    best = ("-", 0.0, 0.0, 0.0)
    for name, series in after.items():
        if name == "*" or name in WHOLE_SERIES.values():
            continue
        p99, mean, count = store_minute(before.get(name, {}), series)
        if mean * count > best[3]:
            best = (name, p99, mean, mean * count)
    return f"{best[0]} p99 {best[1]:.0f} mean {best[2]:.1f}"


async def open_loop(port: int, raws: list[bytes], rate: float, secs: float) -> LoadResult:
    """Send at ``rate`` per second for ``secs`` whatever the answers take (an open loop, as Meta)."""
    result = LoadResult()
    tasks: list[asyncio.Task[None]] = []
    started = time.perf_counter()
    n = 0
    while time.perf_counter() - started < secs:
        due = started + n / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(_one(HOST, port, raws[n % len(raws)], result.latencies, result.statuses)))
        n += 1
    await asyncio.gather(*tasks)
    result.elapsed = time.perf_counter() - started
    return result


async def main(args: argparse.Namespace) -> None:
    workdir_stores = tempfile.mkdtemp(prefix="igsync-soak-")
    with EmbeddedStores(workdir_stores, lock=False, mongo_cache_mb=args.store_cache_mb) as stores:
        port = free_port()
        workdir = Path(tempfile.mkdtemp(prefix="igsync-soak-run-"))
        extra = dict(kv.split("=", 1) for kv in args.env)
        server = BenchServer("igsync", env_for(stores, port, "soak", extra), workdir)
        try:
            await admin_connect(port)
            customers = [f"62{n:014d}" for n in range(200)]
            mix = {"echo_share": 0.3, "redelivery_share": 0.1}
            burst = requests_for(workload(args.capacity_items, customers, **mix, seed=args.seed, tag="cap"), port)
            capacity = await run_load(HOST, port, burst, 32)
            rate = capacity.rate * args.share
            print(f"capacity: {capacity.summary()}")
            print(
                f"soak: {args.minutes} min at {rate:.0f} webhooks/s ({args.share:.0%} of capacity), open loop;"
                f" store cache {args.store_cache_mb} MiB"
            )
            print(
                f"{'minute':>6} {'sent':>6} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'igsync MiB':>11} "
                f"{'mongo MiB':>10} {'redis MiB':>10} {'in igsync p99':>13} {'store p99':>10} {'store mean':>10}"
                f" {'store max':>9} {'redis p99':>9} {'gc max':>7} {'CPU % igsync/mongo/redis/load':>29}"
                "  statuses"
            )
            rows = []
            scraped = await asyncio.to_thread(store_histogram, port)
            redis_pid = stores._redis.proc.pid if stores._redis and stores._redis.proc else None
            pids = (server.proc.pid, stores.mongo_pid, redis_pid, os.getpid())
            cpu_before, cpu_at = [cpu_secs(pid) for pid in pids], time.perf_counter()
            for minute in range(1, args.minutes + 1):
                bodies = workload(int(rate * 60) + 1, customers, **mix, seed=args.seed + minute, tag=f"m{minute}")
                raws = requests_for(bodies, port)
                # Each request on its own connection, as Meta's deliveries are.
                raws = [r.replace(b"HTTP/1.1\r\n", b"HTTP/1.1\r\nConnection: close\r\n", 1) for r in raws]
                result = await open_loop(port, raws, rate, 60.0)
                row = (
                    result.percentile(50) * 1000,
                    result.percentile(99) * 1000,
                    max(result.latencies) * 1000,
                    rss_mib(server.proc.pid),
                    rss_mib(stores.mongo_pid),
                    rss_mib(redis_pid),
                )
                rows.append(row)
                now_scraped = await asyncio.to_thread(store_histogram, port)
                store_p99, store_mean, _ = store_minute(scraped["*"], now_scraped["*"])
                inside_p99, _, _ = store_minute(scraped.get("webhook", {}), now_scraped.get("webhook", {}))
                store_max = slowest_bound(scraped["*"], now_scraped["*"])
                slowest = slowest_command(scraped, now_scraped)
                redis_p99, _, _ = store_minute(scraped.get("redis", {}), now_scraped.get("redis", {}))
                gc_max = slowest_bound(scraped.get("gc", {}), now_scraped.get("gc", {}))
                gc_text = "-" if gc_max == float("inf") else f"{gc_max:.0f}ms"  # "-": no collection ran
                # Who had the two cores this minute: a tail that grows with one process's share
                # is that process's doing, or a machine with no CPU left.
                cpu_now, now = [cpu_secs(pid) for pid in pids], time.perf_counter()
                spent = zip(cpu_before, cpu_now, strict=True)
                shares = "/".join(f"{(b - a) / (now - cpu_at) * 100:.0f}" for a, b in spent)
                cpu_before, cpu_at = cpu_now, now
                scraped = now_scraped
                print(
                    f"{minute:>6} {result.count:>6} {row[0]:>8.1f} {row[1]:>8.1f} {row[2]:>8.1f} {row[3]:>11.0f} "
                    f"{row[4]:>10.0f} {row[5]:>10.0f} {inside_p99:>11.0f}ms {store_p99:>8.0f}ms {store_mean:>8.1f}ms "
                    f"{store_max:>7.0f}ms {redis_p99:>7.0f}ms {gc_text:>7} {shares:>29}"
                    f"  {result.statuses} [{slowest}]",
                    flush=True,
                )
            first, last = rows[0], rows[-1]
            print(
                f"last/first minute: p99 {last[1] / first[1]:.2f}x, igsync RSS {last[3] / first[3]:.2f}x, "
                f"mongo RSS {last[4] / first[4]:.2f}x, redis RSS {last[5] / max(first[5], 1):.2f}x"
            )
        finally:
            server.stop()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=int, default=5)
    parser.add_argument("--share", type=float, default=0.5, help="share of the measured capacity")
    parser.add_argument("--capacity-items", type=int, default=1500, help="webhooks in the capacity burst")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument(
        "--store-cache-mb",
        type=int,
        default=MONGO_CACHE_MB,
        help="the embedded SecantusDB's cache (a smaller one shows whether its growth is the cache)",
    )
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="IGSYNC_X=value",
        help="extra settings for the igsync server (repeatable), e.g. to switch a background check off",
    )
    return parser.parse_args(argv)


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
