"""Webhook ingest throughput, latency and MongoDB round trips — igsync against its floor, in one run.

    .venv/bin/python -m bench.ingest [--items 3000] [--concurrency 32] [--customers 200]
                                     [--triggers off|recorded|http|stream]
                                     [--paced-rate 60] [--paced-items 1200] [--client-bulk-write]

What it does, all on this machine's loopback:
1. starts the embedded stores (SecantusDB + Redis) in a temporary directory;
2. the **floor**: a bare Tornado handler doing HMAC check, JSON parse and one ``insert_one``
   into the same store — the least any webhook receiver does — under the same load;
3. the **required writes**: a bare handler that also writes what the issue requires of every
   message (audit record, message with its unique mid index, conversation, marking answered),
   the plainest correct way and nothing more (``bench/servers.py: RequiredWritesHandler``);
4. **igsync** (``ServerProcess``, instrumented with a PyMongo command listener) with a connected
   channel and warmed-up customers, under the same load: signed single-item webhooks, mixed
   customer texts and owner echoes, with a share of redeliveries;
5. a round-trip phase: messages from known customers only, counting MongoDB commands per item;
6. the store's own cost of the required writes, every command shared by eight requests
   (``bench/store_access.py``), as a ceiling in requests/s;
7. prints req/s, p50/p99, the ratios to the floor and round trips per item;
8. CPU per request of each server twice: under the saturating load, and in a paced phase
   (``--paced-rate``, the same mix and rate for every server) where the store keeps up.

``--client-bulk-write``: igsync sends the commands a MongoDB 8.0+ gets (several collections'
writes in one client ``bulkWrite``) to the embedded store, which does not journal them — the
round trips and CPU of a MongoDB 8 deployment, measured here; never a way to run.

For attribution, ``BENCH_PROFILE=path`` writes a cProfile of igsync's measured phase and
``BENCH_WITHOUT=items,publish,audit`` skips parts of its work (``bench/servers.py``).

All servers are separate processes driven by the same client, so the ratios compare like with
like even though the absolute numbers move with the machine's load.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

from bench.loadgen import LoadResult, build_post, run_load
from bench.store_access import per_document, required_store_ms
from models.store import mongo_client
from server.app.embedded import EmbeddedStores, free_port
from tests.support.helpers import sign

ROOT = Path(__file__).resolve().parent.parent
ACCOUNT = "17841400000000001"
SECRET = "bench-app-secret-0123456789abcdef"
ADMIN = "bench-admin-token-0123456789abcdef"
TRIGGER_SECRET = "bench-trigger-secret-0123456789abcdef"
HOST = "127.0.0.1"


def webhook_body(mid: str, text: str, customer: str, *, echo: bool, ts_ms: int) -> bytes:
    sender, recipient = (ACCOUNT, customer) if echo else (customer, ACCOUNT)
    message: dict[str, Any] = {"mid": mid, "text": text}
    if echo:
        message["is_echo"] = True
    item = {"sender": {"id": sender}, "recipient": {"id": recipient}, "timestamp": ts_ms, "message": message}
    return orjson.dumps({"object": "instagram", "entry": [{"id": ACCOUNT, "time": ts_ms, "messaging": [item]}]})


def workload(
    items: int, customers: list[str], *, echo_share: float, redelivery_share: float, seed: int, tag: str
) -> list[bytes]:
    rng = random.Random(seed)
    bodies: list[bytes] = []
    ts = int(time.time() * 1000)
    for i in range(items):
        if bodies and rng.random() < redelivery_share:
            bodies.append(rng.choice(bodies))
            continue
        customer = rng.choice(customers)
        echo = rng.random() < echo_share
        # The tag too: phases reuse seeds, and an owner text repeated in one conversation within
        # the dedup window finds its pairing document taken — not what a new message meets.
        text = f"{'reply' if echo else 'question'} {tag} {i} from the bench, long enough to look like a real message"
        bodies.append(webhook_body(f"bench.{tag}.{i}", text, customer, echo=echo, ts_ms=ts + i))
    return bodies


def requests_for(bodies: list[bytes], port: int) -> list[bytes]:
    return [build_post(HOST, port, "/webhooks/instagram", b, {"X-Hub-Signature-256": sign(b, SECRET)}) for b in bodies]


def cpu_secs(pid: int | None) -> float:
    """User + system CPU a process has used so far (Linux ``/proc``)."""
    if pid is None:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """CPU per request of a server process and of the store while one load runs: where the
    time goes, so a throughput ratio can be read as "whose cost" (the floor and igsync share
    the store, each of them uses it alone while its load runs)."""

    def __init__(self, server_pid: int, store_pid: int | None) -> None:
        self.pids = (server_pid, store_pid)
        self.start = [cpu_secs(pid) for pid in self.pids]

    def per_request_ms(self, requests: int) -> tuple[float, float]:
        used = [cpu_secs(pid) - before for pid, before in zip(self.pids, self.start, strict=True)]
        return used[0] / requests * 1000, used[1] / requests * 1000


class BenchServer:
    def __init__(self, kind: str, env: dict[str, str], workdir: Path) -> None:
        self.kind = kind
        self.port = int(env["IGSYNC_PORT"])
        self.counts_file = workdir / f"{kind}-counts.json"
        self.last_micros: dict[str, int] = {}
        self.last_named: dict[str, int] = {}
        env = {**env, "BENCH_COUNTS_FILE": str(self.counts_file)}
        self.log = open(workdir / f"{kind}.log", "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.servers", kind],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
        )
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        if "READY" not in line:
            raise RuntimeError(f"{kind} server did not start; see {self.log.name}")

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def counts(self) -> dict[str, int]:
        self.counts_file.unlink(missing_ok=True)
        self.proc.send_signal(signal.SIGUSR2)
        deadline = time.monotonic() + 10
        while not self.counts_file.exists() or not self.counts_file.read_text():
            if time.monotonic() > deadline:
                raise RuntimeError("no counts from the server")
            time.sleep(0.01)
        dump = json.loads(self.counts_file.read_text())
        self.last_micros = dump["micros"]
        self.last_named = dump["named"]
        return dump["counts"]

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(30)
        self.log.close()


async def admin_connect(port: int, triggers: dict[str, Any] | None = None) -> None:
    channel: dict[str, Any] = {
        "page_id": ACCOUNT,
        "username": "bench",
        "owner": {"id": 1, "email": "bench@example.com"},
    }
    if triggers is not None:
        channel["triggers"] = triggers
    body = orjson.dumps(channel)
    raw = build_post(HOST, port, "/api/v1/channels", body, {"Authorization": f"Bearer {ADMIN}"})
    result = await run_load(HOST, port, [raw], 1)
    if not set(result.statuses) <= {200, 201}:
        raise RuntimeError(f"could not connect the bench channel: {result.statuses}")


# ``--client-bulk-write``: igsync as it runs against a MongoDB 8.0+ deployment — its client
# bulkWrites (bench/servers.py), and no TTL sweep of its own (``igsync serve`` runs one only on
# the embedded store; MongoDB's TTL monitor expires documents itself).
MONGODB_8_ENV = {"BENCH_CLIENT_BULK_WRITE": "1", "IGSYNC_EXPIRY_SWEEP_SECS": "0"}


def env_for(stores: EmbeddedStores, port: int, db: str, extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IGSYNC_")}
    env.update(
        {
            "IGSYNC_HOST": HOST,
            "IGSYNC_PORT": str(port),
            "IGSYNC_MONGO_URL": stores.mongo_url or "",
            "IGSYNC_REDIS_URL": stores.redis_url or "",
            "IGSYNC_MONGO_DB": db,
            "IGSYNC_APP_SECRET": SECRET,
            "IGSYNC_VERIFY_TOKEN": "bench-verify-token-0123456789",
            "IGSYNC_ADMIN_TOKEN": ADMIN,
            "IGSYNC_INTERNAL_TOKENS": "bench-internal-token-0123456789ab",
            "IGSYNC_LOG_LEVEL": "WARNING",
            # As `igsync serve` runs on its embedded store, whose own TTL sweeper is off.
            "IGSYNC_EXPIRY_SWEEP_SECS": "5",
        }
    )
    env.update(extra)
    return env


class TriggerSink:
    """Workflow triggers for ``--triggers``: the receiver process (HTTP) and the outbox's drain."""

    def __init__(self, mode: str, stores: EmbeddedStores, db: str, workdir: Path) -> None:
        self.mode = mode
        self.receiver: subprocess.Popen[str] | None = None
        self.db = mongo_client(stores.mongo_url or "")[db]
        if mode == "http":
            self.port = free_port()
            self.log = open(workdir / "trigger-receiver.log", "w")
            self.receiver = subprocess.Popen(
                [sys.executable, "-m", "bench.trigger_receiver", str(self.port), TRIGGER_SECRET],
                cwd=ROOT,
                stdout=subprocess.PIPE,
                stderr=self.log,
                text=True,
            )
            if "READY" not in (self.receiver.stdout.readline() if self.receiver.stdout else ""):
                raise RuntimeError("the trigger receiver did not start")

    def env(self) -> dict[str, str]:
        # "recorded": every customer message gets its job, but this process delivers none —
        # the webhook's own share of the cost, without the dispatcher's.
        return {"IGSYNC_TRIGGER_WORKERS": "0"} if self.mode == "recorded" else {}

    def channel_triggers(self) -> dict[str, Any] | None:
        if self.mode == "http":
            return {"http": {"url": f"http://{HOST}:{self.port}/hook", "secret": TRIGGER_SECRET}}
        if self.mode == "recorded":
            return {"http": {"url": f"http://{HOST}:9/never-called", "secret": TRIGGER_SECRET}}
        if self.mode == "stream":
            return {"redis_stream": True}
        return None

    async def drain(self, timeout: float = 120) -> dict[str, Any]:
        """Pending jobs now, and how long until none is left (the dispatcher's lag after a load)."""
        jobs = self.db["trigger_jobs"]

        async def undelivered() -> int:
            # Jobs not delivered yet, and messages whose mark is not a job yet.
            marked = await self.db["messages"].count_documents({"trigger_pending": True})
            return marked + await jobs.count_documents({"state": "pending"})

        started = time.perf_counter()
        pending_at_end = await undelivered()
        pending = pending_at_end
        while pending and time.perf_counter() - started < timeout:
            await asyncio.sleep(0.05)  # observing background work, not ordering it
            pending = await undelivered()
        return {
            "pending_at_end_of_load": pending_at_end,
            "drain_secs": time.perf_counter() - started,
            "still_pending": pending,
            "delivered": await jobs.count_documents({"state": "delivered"}),
            "dead": await jobs.count_documents({"state": "dead"}),
        }

    async def close(self) -> None:
        await self.db.client.close()
        if self.receiver is not None:
            self.receiver.send_signal(signal.SIGTERM)
            self.receiver.wait(30)
            self.log.close()


def per_item(counts: dict[str, int], items: int) -> str:
    total = sum(counts.values())
    detail = ", ".join(f"{k} {v / items:.2f}" for k, v in sorted(counts.items()))
    return f"{total / items:.2f} round trips/item ({detail})"


async def main(args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="igsync-bench-"))
    stores = EmbeddedStores(workdir / "stores", lock=False).start()
    customers = [f"62{n:014d}" for n in range(args.customers)]
    extra = dict(kv.split("=", 1) for kv in args.env)
    if args.client_bulk_write:
        extra.update(MONGODB_8_ENV)
    out: dict[str, Any] = {"items": args.items, "concurrency": args.concurrency, "customers": args.customers}

    def mixed_load(tag: str) -> list[bytes]:
        # The same seed for both servers: the same mix in the same order, only the mids differ.
        return workload(
            args.items,
            customers,
            echo_share=args.echo_share,
            redelivery_share=args.redelivery_share,
            seed=args.seed,
            tag=tag,
        )

    def warm_bodies() -> list[bytes]:
        # Every customer seen once before the measured load: "known customers".
        return [
            webhook_body(f"bench.warm.{i}", "hello", c, echo=False, ts_ms=int(time.time() * 1000))
            for i, c in enumerate(customers)
        ]

    try:

        async def paced_cpu(server: BenchServer, port: int, tag: str) -> tuple[float, float]:
            # The same mix at a rate the store carries easily: the server's own CPU per
            # request when the store is not the limit (as with MongoDB in production), and
            # without the CPU contention of a saturated 2-core machine.
            bodies = workload(
                args.paced_items,
                customers,
                echo_share=args.echo_share,
                redelivery_share=args.redelivery_share,
                seed=args.seed + 100,
                tag=tag,
            )
            meter = CpuMeter(server.proc.pid, stores.mongo_pid)
            result = await run_load(HOST, port, requests_for(bodies, port), args.concurrency, rate=args.paced_rate)
            assert result.statuses == {200: args.paced_items}, result.statuses
            return meter.per_request_ms(args.paced_items)

        async def bare(kind: str, warm: bool) -> tuple[LoadResult, tuple[float, float], tuple[float, float]]:
            port = free_port()
            server = BenchServer(kind, env_for(stores, port, f"bench_{kind}", {}), workdir)
            try:
                if warm:
                    await run_load(HOST, port, requests_for(warm_bodies(), port), args.concurrency)
                meter = CpuMeter(server.proc.pid, stores.mongo_pid)
                result = await run_load(HOST, port, requests_for(mixed_load(kind), port), args.concurrency)
                cpu = meter.per_request_ms(args.items)
                return result, cpu, await paced_cpu(server, port, f"{kind}paced")
            finally:
                server.stop()

        # -- the floor, then the required writes alone -----------------------------------------
        floor_result, floor_cpu, floor_paced = await bare("floor", warm=False)
        print(f"floor  (HMAC + JSON + 1 insert_one): {floor_result.summary()}")
        required_result, required_cpu, required_paced = await bare("required", warm=True)
        print(f"required writes, plainest code:      {required_result.summary()}")

        # -- igsync ------------------------------------------------------------------------
        port = free_port()
        triggers = TriggerSink(args.triggers, stores, "bench_igsync", workdir)
        igsync = BenchServer("igsync", env_for(stores, port, "bench_igsync", {**extra, **triggers.env()}), workdir)
        try:
            await admin_connect(port, triggers.channel_triggers())
            await run_load(HOST, port, requests_for(warm_bodies(), port), args.concurrency)

            igsync.signal(signal.SIGUSR1)
            meter = CpuMeter(igsync.proc.pid, stores.mongo_pid)
            igsync_result: LoadResult = await run_load(
                HOST, port, requests_for(mixed_load("igsync"), port), args.concurrency
            )
            igsync_cpu = meter.per_request_ms(args.items)
            mixed_counts = igsync.counts()
            mixed_named, mixed_micros = igsync.last_named, igsync.last_micros
            igsync_paced = await paced_cpu(igsync, port, "igsyncpaced")
            drain = await triggers.drain() if args.triggers in ("http", "stream") else None

            # Round trips of one kind of message, one request at a time (nothing to share a
            # command with: the most a message costs) and at the load's concurrency.
            async def phase(echo_share: float, seed: int, tag: str, concurrency: int) -> dict[str, Any]:
                bodies = workload(
                    args.rt_items, customers, echo_share=echo_share, redelivery_share=0.0, seed=seed, tag=tag
                )
                igsync.signal(signal.SIGUSR1)
                await run_load(HOST, port, requests_for(bodies, port), concurrency)
                return {"counts": igsync.counts(), "micros": igsync.last_micros}

            phases = {
                (kind, concurrency): await phase(share, args.seed + n, f"{kind}{concurrency}", concurrency)
                for n, (kind, share) in enumerate((("known", 0.0), ("echo", 1.0)), start=1)
                for concurrency in (1, args.concurrency)
            }
        finally:
            igsync.stop()
            await triggers.close()
        print(f"igsync (full pipeline, triggers {args.triggers}): {igsync_result.summary()}")
        if drain is not None:
            print(
                f"triggers: {drain['pending_at_end_of_load']} pending when the load ended, "
                f"none left {drain['drain_secs']:.2f}s later; {drain['delivered']} delivered, {drain['dead']} dead"
            )
        ratio = igsync_result.rate / floor_result.rate if floor_result.rate else 0.0
        required_ratio = required_result.rate / floor_result.rate if floor_result.rate else 0.0
        own_ratio = igsync_result.rate / required_result.rate if required_result.rate else 0.0
        print(f"throughput ratio igsync/floor: {ratio:.2f} (aim >= 0.60)")
        print(f"    the required writes alone, plainest code / floor: {required_ratio:.2f}")
        print(f"    igsync / the required writes alone: {own_ratio:.2f} (igsync's own share)")
        print(
            "CPU per request (ms), server process / MongoDB store: "
            f"floor {floor_cpu[0]:.2f} / {floor_cpu[1]:.2f}; required writes {required_cpu[0]:.2f} / "
            f"{required_cpu[1]:.2f}; igsync {igsync_cpu[0]:.2f} / {igsync_cpu[1]:.2f}"
        )
        paced_ratio = igsync_paced[0] / floor_paced[0] if floor_paced[0] else 0.0
        print(
            f"CPU per request (ms) at {args.paced_rate:.0f} req/s (the store not the limit), server / store: "
            f"floor {floor_paced[0]:.2f} / {floor_paced[1]:.2f}; required writes {required_paced[0]:.2f} / "
            f"{required_paced[1]:.2f}; igsync {igsync_paced[0]:.2f} / {igsync_paced[1]:.2f}; "
            f"igsync/floor {paced_ratio:.2f} (aim <= 2)"
        )
        print(f"mixed load:                       {per_item(mixed_counts, args.items)}")
        print("mixed load by command: round trips and store time (ms) per item:")
        for name, micros in sorted(mixed_micros.items(), key=lambda kv: -kv[1])[:12]:
            print(f"    {name:32} {mixed_named.get(name, 0) / args.items:5.2f} {micros / args.items / 1000:7.2f}")
        for kind, label in (("known", "customer text, known customer"), ("echo", "owner echo, known customer")):
            for concurrency in (1, args.concurrency):
                counts = phases[(kind, concurrency)]["counts"]
                aim = "  (aim <= 3)" if kind == "known" else ""
                print(f"{label} ({concurrency:>2} conn): {per_item(counts, args.rt_items)}{aim}")
        print("store time per known-customer text, one at a time, by command (ms):")
        for name, micros in sorted(phases[("known", 1)]["micros"].items(), key=lambda kv: -kv[1]):
            print(f"    {name:32} {micros / args.rt_items / 1000:.2f}")
        out.update(
            {
                "floor": {
                    "rate": floor_result.rate,
                    "p50_ms": floor_result.percentile(50) * 1000,
                    "p99_ms": floor_result.percentile(99) * 1000,
                    "statuses": floor_result.statuses,
                },
                "igsync": {
                    "rate": igsync_result.rate,
                    "p50_ms": igsync_result.percentile(50) * 1000,
                    "p99_ms": igsync_result.percentile(99) * 1000,
                    "statuses": igsync_result.statuses,
                },
                "required": {
                    "rate": required_result.rate,
                    "p50_ms": required_result.percentile(50) * 1000,
                    "p99_ms": required_result.percentile(99) * 1000,
                    "statuses": required_result.statuses,
                },
                "ratio": ratio,
                "required_ratio": required_ratio,
                "cpu_ms_per_request": {"floor": floor_cpu, "required": required_cpu, "igsync": igsync_cpu},
                "cpu_ms_per_request_paced": {
                    "rate": args.paced_rate,
                    "floor": floor_paced,
                    "required": required_paced,
                    "igsync": igsync_paced,
                    "ratio": paced_ratio,
                },
                "triggers": {"mode": args.triggers, "drain": drain},
                "round_trips_per_item": {
                    "mixed": sum(mixed_counts.values()) / args.items,
                    **{
                        f"{kind}_{concurrency}_conn": sum(phase["counts"].values()) / args.rt_items
                        for (kind, concurrency), phase in phases.items()
                    },
                },
            }
        )
        # What the store alone allows for the required writes, measured now on the same store.
        documents = await per_document(stores.mongo_url or "", 200)
        ceiling_rate = 1000 / required_store_ms(documents, echo_share=args.echo_share)
        ceiling_ratio = ceiling_rate / floor_result.rate if floor_result.rate else 0.0
        print(
            f"store-bound ceiling of the required writes (every command shared by 8 requests): "
            f"{ceiling_rate:.0f} req/s = {ceiling_ratio:.2f} of the floor"
        )
        out["ceiling"] = {"rate": ceiling_rate, "ratio": ceiling_ratio}
        if args.json:
            Path(args.json).write_text(json.dumps(out, indent=2))  # noqa: ASYNC240 (after the load)
        return out
    finally:
        stores.stop()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=3000, help="webhooks in the measured load")
    parser.add_argument("--concurrency", type=int, default=32, help="keep-alive connections")
    parser.add_argument("--customers", type=int, default=200)
    parser.add_argument("--paced-rate", type=float, default=60.0, help="req/s of the CPU phase below the limit")
    parser.add_argument("--paced-items", type=int, default=1200, help="webhooks in the paced CPU phase")
    parser.add_argument("--echo-share", type=float, default=0.3, help="share of owner echoes")
    parser.add_argument("--redelivery-share", type=float, default=0.1, help="share of redelivered bodies")
    parser.add_argument("--rt-items", type=int, default=300, help="items in each round-trip phase")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="IGSYNC_X=value",
        help="extra settings for the igsync server (repeatable)",
    )
    parser.add_argument(
        "--triggers",
        choices=("off", "recorded", "http", "stream"),
        default="off",
        help="workflow triggers on the bench channel: off; recorded (jobs written, none delivered by this "
        "process); HTTP to a receiver process; or the Redis Stream (bench/triggers.py compares them in one run)",
    )
    parser.add_argument(
        "--client-bulk-write",
        action="store_true",
        help="igsync sends what MongoDB 8.0+ gets (client bulkWrites) to the embedded store, which does not "
        "journal them: the round trips and CPU of a MongoDB 8 deployment, for measuring only",
    )
    parser.add_argument("--json", help="also write the figures to this file")
    return parser.parse_args(argv)


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
