"""Realtime fan-out benchmark: webhook POST → event received on K WebSockets, against a floor.

Run:  .venv/bin/python bench/fanout.py [--sockets 1000] [--channels 10] [--webhooks 100]
                                       [--interval-ms 50] [--rounds 3] [--client-procs 2]

Three series, measured in alternating rounds so that each sees the same machine load:

* **igsync** — ``igsync serve`` as a subprocess on its own embedded stores (a temporary
  data dir); channels and an inbox token made through the admin API; signed customer
  messages POSTed one every ``--interval-ms``, round-robin over the channels. Each text
  carries the wall-clock time of its POST; for every ``chat_message`` frame a client
  records receive time − POST time.
* **igsync hub** — igsync's realtime path alone (``--hub``): the real core, ``/ws``,
  sessions, Redis log and pub/sub on the same stores, with a bench-only POST that publishes
  the same events through ``core.sink`` — what a webhook does once MongoDB has it.
* **floor** — a bare Tornado server (``--floor``) with the same channel layout, the same K
  sockets, broadcasting the same three frames igsync sends per message (captured from
  igsync) with ``write_message`` in a loop: no HMAC, no MongoDB, no Redis, no queues.

Every process runs with igsync's garbage-collector thresholds (``server/ops/runtime.py``).
Clients run in ``--client-procs`` processes of their own (a minimal asyncio WebSocket
client, so their CPU cost stays small on a 2-core machine). Prints p50/p99/max per round
and pooled, the POST answer times, the ratios to the floor, and igsync's RSS per connection.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import gc
import hashlib
import hmac
import json
import os
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MARK = re.compile(rb"bench@([0-9.]+)@")
ACCOUNT_BASE = 17841400000100000
CUSTOMER = "6200000000000101"


# -- a minimal WebSocket client (asyncio Protocol) ----------------------------------------


class Sink(list):
    """Latencies of one client process; ``reached`` is set once ``target`` are in."""

    def __init__(self) -> None:
        super().__init__()
        self.target = 0
        self.reached = asyncio.Event()

    def add(self, value: float) -> None:
        self.append(value)
        if self.target and len(self) >= self.target:
            self.reached.set()


class BenchSocket(asyncio.Protocol):
    """Handshake, one subscribe frame, then count chat_message frames and their latency."""

    def __init__(self, host: str, path: str, subscribe: bytes, sink: Sink, ready: asyncio.Future) -> None:
        self.host = host
        self.path = path
        self.subscribe = subscribe
        self.sink = sink
        self.ready = ready
        self.buffer = bytearray()
        self.upgraded = False
        self.transport: asyncio.Transport | None = None
        self.frames: list[bytes] = []
        self.capture = False
        # Resolved once this many frames were captured.
        self.capture_until = 0
        self.captured: asyncio.Future | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        key = base64.b64encode(os.urandom(16)).decode()
        self.transport.write(
            (
                f"GET {self.path} HTTP/1.1\r\nHost: {self.host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )

    def send_text(self, payload: bytes) -> None:
        mask = os.urandom(4)
        header = bytearray([0x81])
        n = len(payload)
        if n < 126:
            header.append(0x80 | n)
        else:
            header.append(0x80 | 126)
            header += n.to_bytes(2, "big")
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        assert self.transport is not None
        self.transport.write(bytes(header) + mask + masked)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.upgraded:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            status = bytes(self.buffer[:end]).split(b"\r\n", 1)[0]
            if b" 101 " not in status:
                if not self.ready.done():
                    self.ready.set_exception(RuntimeError(status.decode()))
                return
            del self.buffer[: end + 4]
            self.upgraded = True
            self.send_text(self.subscribe)
        self._frames()

    def _frames(self) -> None:
        buf = self.buffer
        pos = 0
        end = len(buf)
        while end - pos >= 2:
            n = buf[pos + 1] & 0x7F
            offset = 2
            if n == 126:
                if end - pos < 4:
                    break
                n = int.from_bytes(buf[pos + 2 : pos + 4], "big")
                offset = 4
            elif n == 127:
                if end - pos < 10:
                    break
                n = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                offset = 10
            if end - pos < offset + n:
                break
            opcode = buf[pos] & 0x0F
            start = pos + offset
            pos = start + n
            if opcode == 0x9:  # ping → pong
                assert self.transport is not None
                self.transport.write(bytes([0x8A, 0x80]) + os.urandom(4))
            elif opcode == 0x1:
                self._text(bytes(buf[start:pos]))
        del buf[:pos]  # once per read, not once per frame

    def _text(self, payload: bytes) -> None:
        now = time.time()
        if payload.startswith(b'{"event":"chat_message"'):
            match = MARK.search(payload)
            if match:
                self.sink.add(now - float(match.group(1)))
        elif b'"subscribed"' in payload[:40] and not self.ready.done():
            self.ready.set_result(None)
        if self.capture:
            self.frames.append(payload)
            if len(self.frames) >= self.capture_until and self.captured is not None and not self.captured.done():
                self.captured.set_result(None)


async def open_sockets(port: int, query: str, channels: list[str], sink: Sink) -> list[BenchSocket]:
    loop = asyncio.get_running_loop()
    sockets = []
    for channel in channels:
        ready = loop.create_future()
        subscribe = json.dumps({"action": "subscribe", "channel_id": channel}).encode()
        protocol = BenchSocket(f"127.0.0.1:{port}", f"/ws?{query}", subscribe, sink, ready)
        await loop.create_connection(lambda p=protocol: p, "127.0.0.1", port)
        sockets.append(protocol)
        await asyncio.wait_for(ready, 60)
    return sockets


def client_main(args: argparse.Namespace) -> None:
    """A client process: open sockets, say ready; on "report N" wait (≤ 60 s) until N latencies
    are in, print them as JSON and start afresh; exit on end of input."""

    async def run() -> None:
        sink = Sink()
        channels = args.channel_ids.split(",")
        await open_sockets(args.port, args.query, channels, sink)
        print("ready", flush=True)
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        while line := (await reader.readline()).decode().strip():
            sink.target = int(line.split()[1])
            if len(sink) < sink.target:
                sink.reached.clear()
                try:
                    await asyncio.wait_for(sink.reached.wait(), 60)
                except TimeoutError:
                    pass
            print(json.dumps(list(sink)), flush=True)
            sink.clear()
            sink.target = 0

    asyncio.run(run())


# -- the floor: a bare Tornado broadcaster --------------------------------------------------


def floor_main(args: argparse.Namespace) -> None:
    import tornado.web
    import tornado.websocket
    from tornado.httpserver import HTTPServer
    from tornado.netutil import bind_sockets

    from server.ops.runtime import collect_young_every

    rooms: dict[str, set[Any]] = {}

    class Socket(tornado.websocket.WebSocketHandler):
        def open(self) -> None:
            self.set_nodelay(True)

        def on_message(self, message: Any) -> None:
            channel = json.loads(message)["channel_id"]
            rooms.setdefault(channel, set()).add(self)
            self.write_message(json.dumps({"event": "subscribed", "channel_id": channel}))

        def on_close(self) -> None:
            for room in rooms.values():
                room.discard(self)

    class Broadcast(tornado.web.RequestHandler):
        def post(self) -> None:
            body = json.loads(self.request.body)
            frames = [f.encode() for f in body["frames"]]
            for socket in rooms.get(body["channel_id"], ()):
                for frame in frames:
                    socket.write_message(frame)
            self.finish("ok")

    async def run() -> None:
        app = tornado.web.Application([(r"/ws", Socket), (r"/broadcast", Broadcast)])
        server = HTTPServer(app)
        server.add_sockets(bind_sockets(args.port, "127.0.0.1"))
        collect_young_every(asyncio.get_running_loop())  # as igsync serve does
        print("listening", flush=True)
        await asyncio.Event().wait()

    asyncio.run(run())


# -- igsync's realtime path alone: the real hub, sockets and Redis, no webhook ingest ---------


def hub_main(args: argparse.Namespace) -> None:
    """The real core (hub, /ws, sessions, Redis log) on the running serve's stores, plus a
    bench-only POST that publishes the captured events through ``core.sink`` — what a
    webhook does after MongoDB, without MongoDB."""
    import tornado.web
    from tornado.httpserver import HTTPServer
    from tornado.netutil import bind_sockets

    from config import Settings
    from server.app.core import build_core
    from server.app.routes import make_app
    from server.inbox.events import Event
    from server.ops.runtime import collect_young_every

    state = json.loads(Path(args.query).read_text())

    async def run() -> None:
        settings = Settings(
            host="127.0.0.1",
            port=args.port,
            mongo_url=state["mongo_url"],
            redis_url=state["redis_url"],
            log_level="WARNING",
        )
        core = await build_core(settings, ensure_indexes=False)
        await core.start()

        class Publish(tornado.web.RequestHandler):
            async def post(self) -> None:
                received_at = time.time()
                body = json.loads(self.request.body)
                events = [
                    Event(f["event"], f["channel_id"], f["conversation_id"], f["data"], received_at)
                    for f in body["frames"]
                ]
                await core.sink.publish(events)
                self.finish("ok")

        app = make_app(core)
        app.add_handlers(r".*", [(r"/bench/publish", Publish)])
        HTTPServer(app).add_sockets(bind_sockets(args.port, "127.0.0.1"))
        collect_young_every(asyncio.get_running_loop())  # as igsync serve does
        print("listening", flush=True)
        await asyncio.Event().wait()

    asyncio.run(run())


# -- the driver -------------------------------------------------------------------------------


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def free_port() -> int:
    from server.app.embedded import free_port as pick

    return pick()


def wait_http(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer")


def api(base: str, path: str, body: Any, token: str) -> Any:
    request = urllib.request.Request(
        base + path,
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def webhook_body(account_id: str, mid: str, text: str) -> bytes:
    return json.dumps(
        {
            "object": "instagram",
            "entry": [
                {
                    "id": account_id,
                    "time": int(time.time() * 1000),
                    "messaging": [
                        {
                            "sender": {"id": CUSTOMER},
                            "recipient": {"id": account_id},
                            "timestamp": int(time.time() * 1000),
                            "message": {"mid": mid, "text": text},
                        }
                    ],
                }
            ],
        }
    ).encode()


class Clients:
    """The client processes, with the same channel layout for igsync and the floor."""

    def __init__(self, port: int, query: str, assignment: list[list[str]], per_channel: int) -> None:
        self.procs = []
        # Latencies each process reports per round: its sockets × the messages per channel.
        self.expected = [len(channels) * per_channel for channels in assignment]
        for channels in assignment:
            self.procs.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        __file__,
                        "--client",
                        "--port",
                        str(port),
                        "--query",
                        query,
                        "--channel-ids",
                        ",".join(channels),
                    ],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    text=True,
                )
            )
        for proc in self.procs:
            line = proc.stdout.readline().strip() if proc.stdout else ""
            if line != "ready":
                raise RuntimeError(f"client did not get ready: {line!r}")

    def report(self) -> list[float]:
        """This round's latencies from every client process."""
        for proc, expected in zip(self.procs, self.expected, strict=True):
            assert proc.stdin is not None
            proc.stdin.write(f"report {expected}\n")
            proc.stdin.flush()
        latencies: list[float] = []
        for proc in self.procs:
            assert proc.stdout is not None
            latencies.extend(json.loads(proc.stdout.readline()))
        return latencies

    def close(self) -> None:
        for proc in self.procs:
            if proc.stdin is not None:
                proc.stdin.close()
        for proc in self.procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()


def layout(channel_ids: list[str], sockets: int, procs: int) -> list[list[str]]:
    per_socket = [channel_ids[i % len(channel_ids)] for i in range(sockets)]
    return [per_socket[p::procs] for p in range(procs)]


def percentiles(values: list[float]) -> tuple[float, float, float]:
    ms = sorted(x * 1000 for x in values)
    return statistics.median(ms), ms[min(len(ms) - 1, int(len(ms) * 0.99))], ms[-1]


def summary(name: str, latencies: list[float], expected: int, answers: list[float]) -> dict[str, float]:
    if not latencies:
        raise RuntimeError(f"{name}: no events received")
    p50, p99, worst = percentiles(latencies)
    a50, a99, _ = percentiles(answers)
    print(
        f"  {name:<14} POST → event: p50 {p50:7.1f} ms  p99 {p99:7.1f} ms  max {worst:7.1f} ms  "
        f"received {len(latencies)}/{expected}  (POST answered: p50 {a50:.1f}, p99 {a99:.1f} ms)"
    )
    return {"p50": p50, "p99": p99, "max": worst, "received": len(latencies), "expected": expected}


async def post_stream(body_for: Any, count: int, interval: float, warm_for: Any = None, warm: int = 0) -> list[float]:
    """POST ``body_for(i)`` for i < count, one every ``interval`` seconds (not waiting for
    answers), after ``warm`` unmeasured ``warm_for(i)`` posts (connections, first-use costs)."""
    from tornado.httpclient import AsyncHTTPClient, HTTPRequest

    client = AsyncHTTPClient(force_instance=True)
    for i in range(warm):
        url, body, headers = warm_for(i)
        await client.fetch(HTTPRequest(url, method="POST", body=body, headers=headers))
    start = time.monotonic()
    pending = []
    for i in range(count):
        delay = start + i * interval - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        url, body, headers = body_for(i)
        pending.append(asyncio.ensure_future(client.fetch(HTTPRequest(url, method="POST", body=body, headers=headers))))
    for response in await asyncio.gather(*pending):
        assert response.code == 200, response.body
    client.close()
    # How long each POST took to be answered (for igsync: the ingest, MongoDB included).
    return [r.request_time for r in await asyncio.gather(*pending)]


class Igsync:
    """``igsync serve`` on its own embedded stores, with channels, a token and captured frames."""

    def __init__(self, args: argparse.Namespace, data_dir: Path) -> None:
        from server.app import devsecrets

        self.args = args
        self.secrets = devsecrets.load_or_create(data_dir)
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("IGSYNC_")}
        env.update(IGSYNC_DATA_DIR=str(data_dir), IGSYNC_PORT=str(self.port), IGSYNC_LOG_LEVEL="WARNING")
        self.log = open(data_dir / "serve.log", "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "server", "serve"], cwd=ROOT, env=env, stdout=self.log, stderr=self.log
        )
        wait_http(self.base + "/healthz")
        admin = self.secrets["admin_token"]
        owner = {"id": 900, "email": "bench@example.com"}
        self.channel_ids, self.accounts = [], []
        for i in range(args.channels):
            account = str(ACCOUNT_BASE + i)
            body = {"page_id": account, "username": f"b{i}", "owner": owner}
            self.channel_ids.append(api(self.base, "/api/v1/channels", body, admin)["channel"]["id"])
            self.accounts.append(account)
        # Channels of their own for the hub-only series: it shares this server's Redis, and
        # the pub/sub would (rightly) carry its events to this server's sockets otherwise.
        self.hub_channel_ids = []
        for i in range(args.channels):
            body = {"page_id": str(ACCOUNT_BASE + 500 + i), "username": f"h{i}", "owner": owner}
            self.hub_channel_ids.append(api(self.base, "/api/v1/channels", body, admin)["channel"]["id"])
        self.token = api(self.base, "/api/v1/tokens", {"owner_email": owner["email"]}, admin)["token"]
        self.frames = asyncio.run(self._warm_up())

    def signed(self, account: str, mid: str, text: str) -> tuple[str, bytes, dict[str, str]]:
        body = webhook_body(account, mid, text)
        signature = "sha256=" + hmac.new(self.secrets["app_secret"].encode(), body, hashlib.sha256).hexdigest()
        return self.base + "/webhooks/instagram", body, {"X-Hub-Signature-256": signature}

    async def _warm_up(self) -> list[str]:
        """Every channel's customer and conversation exist before measuring; one observer
        socket captures the frames igsync sends per message (the floor's payloads)."""
        observer = (await open_sockets(self.port, f"access_token={self.token}", self.channel_ids[:1], Sink()))[0]
        observer.capture = True
        observer.capture_until = 6
        observer.captured = asyncio.get_running_loop().create_future()
        n = self.args.channels
        await post_stream(lambda i: self.signed(self.accounts[i], f"warm-{i}", "warm up"), n, 0)
        await post_stream(lambda i: self.signed(self.accounts[0], "tpl", "bench@0.0@ template"), 1, 0)
        await asyncio.wait_for(observer.captured, 30)
        assert observer.transport is not None
        observer.transport.close()
        return [f.decode() for f in observer.frames[3:6]]

    def stream(self, round_no: int) -> list[float]:
        args = self.args

        def measured(i: int) -> tuple[str, bytes, dict[str, str]]:
            account = self.accounts[i % args.channels]
            return self.signed(account, f"bench-{round_no}-{i}", f"bench@{time.time():.6f}@ message {i}")

        def unmeasured(i: int) -> tuple[str, bytes, dict[str, str]]:
            return self.signed(self.accounts[i % args.channels], f"bench-warm-{round_no}-{i}", "warm up")

        return asyncio.run(post_stream(measured, args.webhooks, args.interval_ms / 1000, unmeasured, args.channels))

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


class StampedSeries:
    """A series whose POST bodies are ``body(i, stamp)``: measured ones carry the send time."""

    args: argparse.Namespace

    def body(self, i: int, stamp: str) -> tuple[str, bytes, dict[str, str]]:
        raise NotImplementedError

    def stream(self, round_no: int) -> list[float]:
        args = self.args
        return asyncio.run(
            post_stream(
                lambda i: self.body(i, f"bench@{time.time():.6f}@"),
                args.webhooks,
                args.interval_ms / 1000,
                lambda i: self.body(i, "warm"),
                args.channels,
            )
        )


class HubOnly(StampedSeries):
    """igsync's realtime path alone (``--hub``), on the igsync run's own stores and channels."""

    def __init__(self, args: argparse.Namespace, igsync: Igsync, data_dir: Path) -> None:
        self.args = args
        self.igsync = igsync
        self.port = free_port()
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--hub", "--port", str(self.port), "--query", str(data_dir / "stores.json")],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None and self.proc.stdout.readline().strip() == "listening"
        # The captured frames, as events of each channel (ids of the right channel).
        self.templates = [json.loads(f) for f in igsync.frames]

    def body(self, i: int, stamp: str) -> tuple[str, bytes, dict[str, str]]:
        channel_id = self.igsync.hub_channel_ids[i % self.args.channels]
        frames = []
        for template in self.templates:
            text = json.dumps(template["data"]).replace("bench@0.0@", stamp)
            frames.append(
                {
                    "event": template["event"],
                    "channel_id": channel_id,
                    "conversation_id": template["conversation_id"],
                    "data": json.loads(text),
                }
            )
        return f"http://127.0.0.1:{self.port}/bench/publish", json.dumps({"frames": frames}).encode(), {}

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


class Floor(StampedSeries):
    """The bare Tornado broadcaster, with the same channel layout and frames."""

    def __init__(self, args: argparse.Namespace, frames: list[str]) -> None:
        self.args = args
        self.frames = frames
        self.port = free_port()
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--floor", "--port", str(self.port)], stdout=subprocess.PIPE, text=True
        )
        assert self.proc.stdout is not None and self.proc.stdout.readline().strip() == "listening"
        self.channel_ids = [f"floor-{i}" for i in range(args.channels)]

    def body(self, i: int, stamp: str) -> tuple[str, bytes, dict[str, str]]:
        payloads = [f.replace("bench@0.0@", stamp) for f in self.frames]
        body = json.dumps({"channel_id": self.channel_ids[i % self.args.channels], "frames": payloads}).encode()
        return f"http://127.0.0.1:{self.port}/broadcast", body, {}

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sockets", type=int, default=1000)
    parser.add_argument("--channels", type=int, default=10)
    parser.add_argument("--webhooks", type=int, default=100)
    parser.add_argument("--interval-ms", type=float, default=50.0)
    parser.add_argument("--client-procs", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3, help="streams per server, alternating (same load for both)")
    parser.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--floor", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--hub", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--query", default="", help=argparse.SUPPRESS)
    parser.add_argument("--channel-ids", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    # Every socket is a file descriptor in the server and in a client process.
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    # Every process of the bench (floor, hub, clients) collects garbage as `igsync serve` does
    # (server/ops/runtime.py): with thousands of sockets a default full collection stops a
    # process for most of a second, in the floor as much as in igsync. The same settings for
    # all, so that the series differ by their code only (the servers also collect the young
    # generation on igsync's timer, collect_young_every).
    from server.ops.runtime import GC_THRESHOLDS

    gc.set_threshold(*GC_THRESHOLDS)
    if args.client:
        client_main(args)
        return
    if args.floor:
        floor_main(args)
        return
    if args.hub:
        hub_main(args)
        return
    if args.webhooks % args.channels or args.sockets % args.channels:
        raise SystemExit("--webhooks and --sockets must be multiples of --channels")
    if args.sockets + 100 > hard:
        raise SystemExit(
            f"--sockets {args.sockets} needs a file descriptor limit above {args.sockets + 100} (hard {hard})"
        )
    print(f"load average at start: {os.getloadavg()[0]:.1f} ({os.cpu_count()} cores)")
    per_channel = args.webhooks // args.channels
    print(
        f"fan-out: {args.sockets} sockets over {args.channels} channels ({args.sockets // args.channels} per message), "
        f"{args.webhooks} webhooks every {args.interval_ms:g} ms per round, {args.rounds} rounds alternating "
        f"igsync and floor, {args.client_procs} client processes"
    )
    data_dir = Path(tempfile.mkdtemp(prefix="igsync-fanout-"))
    started: list[Any] = []
    try:
        igsync = Igsync(args, data_dir)
        started.append(igsync)
        rss_before = rss_kib(igsync.proc.pid)
        assignment = layout(igsync.channel_ids, args.sockets, args.client_procs)
        igsync_clients = Clients(igsync.port, f"access_token={igsync.token}", assignment, per_channel)
        started.append(igsync_clients)
        rss_after = rss_kib(igsync.proc.pid)
        hub = HubOnly(args, igsync, data_dir)
        started.append(hub)
        hub_layout = layout(igsync.hub_channel_ids, args.sockets, args.client_procs)
        hub_clients = Clients(hub.port, f"access_token={igsync.token}", hub_layout, per_channel)
        started.append(hub_clients)
        floor = Floor(args, igsync.frames)
        started.append(floor)
        floor_clients = Clients(floor.port, "", layout(floor.channel_ids, args.sockets, args.client_procs), per_channel)
        started.append(floor_clients)
        expected = per_channel * args.channels * (args.sockets // args.channels)
        series = (
            ("igsync", igsync, igsync_clients),
            ("igsync hub", hub, hub_clients),
            ("floor", floor, floor_clients),
        )
        pooled: dict[str, list[float]] = {name: [] for name, _, _ in series}
        answers: dict[str, list[float]] = {name: [] for name, _, _ in series}
        for round_no in range(args.rounds):
            print(f" round {round_no + 1} (load average {os.getloadavg()[0]:.1f})")
            for name, target, clients in series:
                posted = target.stream(round_no)
                latencies = clients.report()
                summary(name, latencies, expected, posted)
                pooled[name].extend(latencies)
                answers[name].extend(posted)
        print(f" all rounds (load average at end {os.getloadavg()[0]:.1f})")
        result = summary("igsync", pooled["igsync"], expected * args.rounds, answers["igsync"])
        hub_only = summary("igsync hub", pooled["igsync hub"], expected * args.rounds, answers["igsync hub"])
        base = summary("floor", pooled["floor"], expected * args.rounds, answers["floor"])
        per_conn = (rss_after - rss_before) / args.sockets
        print(f"  igsync RSS {rss_after / 1024:.0f} MiB with the sockets open; {per_conn:.1f} KiB per connection")
        print(
            f"  ratio igsync/floor:     p50 {result['p50'] / base['p50']:.2f}x   p99 {result['p99'] / base['p99']:.2f}x"
            f"   (frames per message per socket: {len(igsync.frames)}, {sum(len(f) for f in igsync.frames)} bytes)"
        )
        print(
            f"  ratio igsync hub/floor: p50 {hub_only['p50'] / base['p50']:.2f}x   "
            f"p99 {hub_only['p99'] / base['p99']:.2f}x   (the realtime path alone, no webhook ingest)"
        )
        for name, figures in (("igsync", result), ("igsync hub", hub_only)):
            if figures["received"] != figures["expected"]:
                print(f"  WARNING: {name} delivered {figures['received']} events for {figures['expected']} expected")
    finally:
        for part in reversed(started):
            if isinstance(part, Clients):
                part.close()
            else:
                part.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
