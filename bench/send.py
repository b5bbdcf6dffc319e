"""Sending through igsync against a fake Graph API, beside a bare client posting to the same fake.

Run: ``.venv/bin/python -m bench.send [--sends 400] [--concurrency 16]``.

The fake Send API (a real local HTTP server in this process) answers each call with a
``message_id`` at once and then posts the message's echo webhook, signed as Meta signs it, to
igsync. Two runs, one after the other, at the same concurrency:

* **floor** — a bare Tornado client posting the same Send API calls straight to the fake:
  what the machine does for one call with nothing stored;
* **igsync** — ``POST /api/v1/conversations/{id}/messages`` to a real igsync process on the
  embedded stores: stored (202) → the worker's Send API call → mid recorded → echo paired.

It prints sends/s and p50/p99 of: the answer (202: stored), stored → Instagram accepted (the
fake received the call), and → echo answered as a duplicate; and the ratios of igsync to the
floor (throughput, and accepted latency against one bare call).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
import tornado.web
from tornado.httpclient import AsyncHTTPClient, HTTPRequest
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets

from bench.ingest import ACCOUNT, ADMIN, HOST, SECRET, BenchServer, env_for, webhook_body
from bench.soak import store_histogram
from server.app.embedded import EmbeddedStores, free_port
from tests.support.helpers import sign

TOKEN = "IGQVJ-bench-channel-access-token-0123456789"


class FakeSendApi:
    """Meta's Send API: a mid per call, then the echo webhook to igsync (when it has a target)."""

    def __init__(self) -> None:
        self.accepted: dict[str, float] = {}  # text → when the call arrived
        self.echoed: dict[str, float] = {}  # text → when igsync answered its echo
        self.echo_to: int | None = None
        self.http = AsyncHTTPClient(force_instance=True, max_clients=64)
        self.calls = 0
        self.expected = 0
        self.all_echoed = asyncio.Event()

    def start(self) -> int:
        fake = self

        class Handler(tornado.web.RequestHandler):
            async def post(self, version: str, account: str) -> None:
                body = orjson.loads(self.request.body)
                fake.calls += 1
                text = body["message"].get("text", "")
                fake.accepted[text] = time.perf_counter()
                mid = f"aWdfZAG1bench_{fake.calls}"
                self.finish(orjson.dumps({"recipient_id": body["recipient"]["id"], "message_id": mid}))
                if fake.echo_to is not None:
                    asyncio.get_running_loop().create_task(fake.echo(mid, text, body["recipient"]["id"]))

        sockets = bind_sockets(0, HOST)
        app = tornado.web.Application([(r"/(v[0-9.]+)/([^/]+)/messages", Handler)], log_function=lambda _: None)
        HTTPServer(app).add_sockets(sockets)
        return sockets[0].getsockname()[1]

    async def echo(self, mid: str, text: str, customer: str) -> None:
        body = webhook_body(mid, text, customer, echo=True, ts_ms=int(time.time() * 1000))
        request = HTTPRequest(
            f"http://{HOST}:{self.echo_to}/webhooks/instagram",
            method="POST",
            body=body,
            headers={"X-Hub-Signature-256": sign(body, SECRET), "Content-Type": "application/json"},
        )
        response = await self.http.fetch(request, raise_error=False)
        if response.code == 200 and orjson.loads(response.body).get("duplicate"):
            self.echoed[text] = time.perf_counter()
            if len(self.echoed) >= self.expected:
                self.all_echoed.set()


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))] * 1000 if ordered else 0.0


async def bounded(concurrency: int, jobs: list[Any]) -> list[Any]:
    gate = asyncio.Semaphore(concurrency)

    async def run(job: Any) -> Any:
        async with gate:
            return await job()

    return await asyncio.gather(*(run(j) for j in jobs))


async def floor(port: int, sends: int, concurrency: int) -> tuple[float, list[float]]:
    """Bare Send API calls to the fake: calls/s and per-call latency."""
    http = AsyncHTTPClient(force_instance=True, max_clients=concurrency)
    url = f"http://{HOST}:{port}/v22.0/{ACCOUNT}/messages?access_token={TOKEN}"
    latencies: list[float] = []

    async def call(n: int) -> None:
        body = orjson.dumps({"recipient": {"id": "6200000000000001"}, "message": {"text": f"floor {n}"}})
        started = time.perf_counter()
        await http.fetch(HTTPRequest(url, method="POST", body=body), raise_error=False)
        latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await bounded(concurrency, [lambda n=n: call(n) for n in range(sends)])
    elapsed = time.perf_counter() - started
    http.close()
    return sends / elapsed, latencies


async def igsync_run(port: int, fake: FakeSendApi, sends: int, concurrency: int) -> dict[str, Any]:
    http = AsyncHTTPClient(force_instance=True, max_clients=concurrency)
    base = f"http://{HOST}:{port}"

    async def call(path: str, body: Any, token: str, raw: bytes | None = None, headers: dict | None = None) -> Any:
        data = raw if raw is not None else orjson.dumps(body)
        all_headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json", **(headers or {})}
        response = await http.fetch(HTTPRequest(base + path, method="POST", body=data, headers=all_headers))
        return orjson.loads(response.body)

    channel = {"page_id": ACCOUNT, "username": "bench", "owner": {"id": 1, "email": "bench@example.com"}}
    await call("/api/v1/channels", {**channel, "access_token": TOKEN}, ADMIN)
    inbox = (await call("/api/v1/tokens", {"owner_email": "bench@example.com"}, ADMIN))["token"]
    conversations = []
    for n in range(20):
        body = webhook_body(f"bench.in.{n}", "hello", f"62000000009{n:05d}", echo=False, ts_ms=int(time.time() * 1000))
        answer = await call(
            "/webhooks/instagram", None, "-", raw=body, headers={"X-Hub-Signature-256": sign(body, SECRET)}
        )
        conversations.append(answer["data"]["conversation"]["id"])
    posted: dict[str, float] = {}
    answered: list[float] = []

    async def send(n: int) -> None:
        text = f"bench send {n}"
        posted[text] = time.perf_counter()
        await call(f"/api/v1/conversations/{conversations[n % len(conversations)]}/messages", {"content": text}, inbox)
        answered.append(time.perf_counter() - posted[text])

    started = time.perf_counter()
    await bounded(concurrency, [lambda n=n: send(n) for n in range(sends)])
    try:
        async with asyncio.timeout(120):
            await fake.all_echoed.wait()
    except TimeoutError:
        pass  # reported: fewer echoes paired than sends
    last_accept = max(fake.accepted.values(), default=started)
    http.close()
    return {
        "rate": len(fake.accepted) / (last_accept - started),
        "answered": answered,
        "accepted": [fake.accepted[t] - posted[t] for t in posted if t in fake.accepted],
        "echoed": [fake.echoed[t] - posted[t] for t in posted if t in fake.echoed],
        "sends": sends,
        "calls": fake.calls,
    }


async def main(args: argparse.Namespace) -> None:
    fake = FakeSendApi()
    fake_port = fake.start()
    floor_rate, floor_latencies = await floor(fake_port, args.sends, args.concurrency)
    fake.accepted.clear()
    fake.calls = 0
    with EmbeddedStores(tempfile.mkdtemp(prefix="igsync-send-"), lock=False) as stores:
        port = free_port()
        fake.echo_to = port
        fake.expected = args.sends
        extra = {"IGSYNC_GRAPH_API_URL": f"http://{HOST}:{fake_port}", "IGSYNC_SEND_POLL_SECS": "0.2"}
        server = BenchServer("igsync", env_for(stores, port, "send", extra), Path(tempfile.mkdtemp()))
        try:
            result = await igsync_run(port, fake, args.sends, args.concurrency)
            commands = await asyncio.to_thread(store_histogram, port)
        finally:
            server.stop()
    print(f"sends: {args.sends} at concurrency {args.concurrency}; Send API calls made by igsync: {result['calls']}")
    print(
        f"floor (bare client → fake Send API): {floor_rate:.0f} calls/s, p50 {pct(floor_latencies, 50):.1f} ms, "
        f"p99 {pct(floor_latencies, 99):.1f} ms"
    )
    print(
        f"igsync: {result['rate']:.0f} sends/s; answer (202, stored) p50 {pct(result['answered'], 50):.1f} / "
        f"p99 {pct(result['answered'], 99):.1f} ms; stored → accepted p50 {pct(result['accepted'], 50):.1f} / "
        f"p99 {pct(result['accepted'], 99):.1f} ms; → echo paired p50 {pct(result['echoed'], 50):.1f} / "
        f"p99 {pct(result['echoed'], 99):.1f} ms ({len(result['echoed'])} echoes paired)"
    )
    busiest = sorted(
        (
            (name, c.get("count", 0.0), c.get("sum", 0.0))
            for name, c in commands.items()
            if name not in ("*", "webhook")
        ),
        key=lambda row: -row[2],
    )[:4]
    shares = [
        f"{name} {count / args.sends:.1f}/send {total / count * 1000:.1f} ms" for name, count, total in busiest if count
    ]
    print(f"store commands of the run, busiest first: {', '.join(shares)}")
    print(
        f"ratio igsync/floor: throughput {result['rate'] / floor_rate:.2f}x; accepted p50 "
        f"{pct(result['accepted'], 50) / max(pct(floor_latencies, 50), 1e-9):.1f}x the bare call "
        f"(mean bare call {statistics.mean(floor_latencies) * 1000:.1f} ms)"
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sends", type=int, default=400)
    parser.add_argument("--concurrency", type=int, default=16)
    return parser.parse_args(argv)


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
