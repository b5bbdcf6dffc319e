"""Realtime fan-out benchmark: webhook POST → event received on K WebSockets, against a floor.

Run:  .venv/bin/python bench/fanout.py [--sockets 1000] [--channels 10] [--webhooks 100] [--interval-ms 50]

1. Starts ``igsync serve`` as a subprocess on its own embedded stores (a temporary data dir),
   connects ``--channels`` channels and an inbox token through the admin API.
2. Starts ``--client-procs`` client processes that open ``--sockets`` WebSockets in all,
   spread evenly over the channels, each subscribed to its channel (a minimal asyncio
   WebSocket client, so the clients' own CPU cost stays small on a 2-core machine).
3. Posts ``--webhooks`` signed customer messages, one every ``--interval-ms``, round-robin
   over the channels. Each message text carries the wall-clock time of its POST; each
   client records, for every ``chat_message`` frame, receive time − POST time.
4. The floor, in the same run: a bare Tornado server (same script, ``--floor``) with the same
   channel layout, the same K sockets from the same client processes, broadcasting the same
   three frames igsync sends per message (captured from igsync in step 3) on a POST — no
   HMAC, no MongoDB, no Redis, no queues.

Prints p50/p99/max latency for both, their ratio, and igsync's RSS per connection.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
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


class BenchSocket(asyncio.Protocol):
    """Handshake, one subscribe frame, then count chat_message frames and their latency."""

    def __init__(self, host: str, path: str, subscribe: bytes, sink: list[float], ready: asyncio.Future) -> None:
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
                self.sink.append(now - float(match.group(1)))
        elif b'"subscribed"' in payload[:40] and not self.ready.done():
            self.ready.set_result(None)
        if self.capture:
            self.frames.append(payload)
            if len(self.frames) >= self.capture_until and self.captured is not None and not self.captured.done():
                self.captured.set_result(None)


async def open_sockets(port: int, query: str, channels: list[str], sink: list[float]) -> list[BenchSocket]:
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
    """A client process: open sockets, say ready, collect until told to stop, print latencies."""

    async def run() -> None:
        sink: list[float] = []
        channels = args.channel_ids.split(",")
        await open_sockets(args.port, args.query, channels, sink)
        print("ready", flush=True)
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        await reader.readline()  # the driver says "stop" once the stream is over
        print(json.dumps(sink), flush=True)

    asyncio.run(run())


# -- the floor: a bare Tornado broadcaster --------------------------------------------------


def floor_main(args: argparse.Namespace) -> None:
    import tornado.web
    import tornado.websocket
    from tornado.httpserver import HTTPServer
    from tornado.netutil import bind_sockets

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
    from server.embedded import free_port as pick

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

    def __init__(self, port: int, query: str, assignment: list[list[str]]) -> None:
        self.procs = []
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

    def collect(self) -> list[float]:
        latencies: list[float] = []
        for proc in self.procs:
            assert proc.stdin is not None and proc.stdout is not None
            proc.stdin.write("stop\n")
            proc.stdin.flush()
        for proc in self.procs:
            assert proc.stdout is not None
            latencies.extend(json.loads(proc.stdout.readline()))
            proc.wait(30)
        return latencies


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
    a50, a99, amax = percentiles(answers)
    print(
        f"  {name:<7} POST → event: p50 {p50:7.1f} ms   p99 {p99:7.1f} ms   max {worst:7.1f} ms   "
        f"received {len(latencies)}/{expected}   (POST answered: p50 {a50:.1f} p99 {a99:.1f} max {amax:.1f} ms)"
    )
    return {"p50": p50, "p99": p99, "max": worst}


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


def run_igsync(args: argparse.Namespace, data_dir: Path) -> tuple[dict[str, float], float, list[str], int]:
    from server import devsecrets

    secrets = devsecrets.load_or_create(data_dir)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("IGSYNC_")}
    env.update(IGSYNC_DATA_DIR=str(data_dir), IGSYNC_PORT=str(port), IGSYNC_LOG_LEVEL="WARNING")
    log = open(data_dir / "serve.log", "wb")
    server = subprocess.Popen([sys.executable, "-m", "server", "serve"], cwd=ROOT, env=env, stdout=log, stderr=log)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_http(base + "/healthz")
        admin = secrets["admin_token"]
        channel_ids, accounts = [], []
        for i in range(args.channels):
            account = str(ACCOUNT_BASE + i)
            owner = {"id": 900, "email": "bench@example.com"}
            channel = api(base, "/api/v1/channels", {"page_id": account, "username": f"b{i}", "owner": owner}, admin)
            channel_ids.append(channel["channel"]["id"])
            accounts.append(account)
        token = api(base, "/api/v1/tokens", {"owner_email": "bench@example.com"}, admin)["token"]

        def signed(account: str, mid: str, text: str) -> tuple[str, bytes, dict[str, str]]:
            body = webhook_body(account, mid, text)
            signature = "sha256=" + hmac.new(secrets["app_secret"].encode(), body, hashlib.sha256).hexdigest()
            return base + "/webhooks/instagram", body, {"X-Hub-Signature-256": signature}

        # Warm up: every channel's customer and conversation exist before measuring, and one
        # observer socket captures the frames igsync sends per message (the floor's payloads).
        templates: list[bytes] = []

        async def warm_up() -> None:
            sink: list[float] = []
            observer = (await open_sockets(port, f"access_token={token}", channel_ids[:1], sink))[0]
            observer.capture = True
            observer.capture_until = 6
            observer.captured = asyncio.get_running_loop().create_future()
            await post_stream(lambda i: signed(accounts[i], f"warm-{i}", "warm up"), args.channels, 0)
            await post_stream(lambda i: signed(accounts[0], "tpl", "bench@0.0@ template"), 1, 0)
            await asyncio.wait_for(observer.captured, 30)
            templates.extend(observer.frames[3:6])
            assert observer.transport is not None
            observer.transport.close()

        asyncio.run(warm_up())
        rss_before = rss_kib(server.pid)
        clients = Clients(port, f"access_token={token}", layout(channel_ids, args.sockets, args.client_procs))
        rss_after = rss_kib(server.pid)

        def measured(i: int) -> tuple[str, bytes, dict[str, str]]:
            return signed(accounts[i % args.channels], f"bench-{i}", f"bench@{time.time():.6f}@ message {i}")

        def unmeasured(i: int) -> tuple[str, bytes, dict[str, str]]:
            return signed(accounts[i % args.channels], f"bench-warm-{i}", "warm up")

        answers = asyncio.run(post_stream(measured, args.webhooks, args.interval_ms / 1000, unmeasured, args.channels))
        latencies = clients.collect()
        expected = args.webhooks * args.sockets // args.channels
        result = summary("igsync", latencies, expected, answers)
        per_conn = (rss_after - rss_before) / args.sockets
        frames = [t.decode() for t in templates]
        return result, per_conn, frames, rss_after
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


def run_floor(args: argparse.Namespace, frames: list[str]) -> dict[str, float]:
    port = free_port()
    floor = subprocess.Popen(
        [sys.executable, __file__, "--floor", "--port", str(port)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert floor.stdout is not None and floor.stdout.readline().strip() == "listening"
        channel_ids = [f"floor-{i}" for i in range(args.channels)]
        clients = Clients(port, "", layout(channel_ids, args.sockets, args.client_procs))

        def measured(i: int) -> tuple[str, bytes, dict[str, str]]:
            stamp = f"bench@{time.time():.6f}@"
            payloads = [f.replace("bench@0.0@", stamp) for f in frames]
            body = json.dumps({"channel_id": channel_ids[i % args.channels], "frames": payloads}).encode()
            return f"http://127.0.0.1:{port}/broadcast", body, {}

        def unmeasured(i: int) -> tuple[str, bytes, dict[str, str]]:
            payloads = [f.replace("bench@0.0@", "warm") for f in frames]
            body = json.dumps({"channel_id": channel_ids[i % args.channels], "frames": payloads}).encode()
            return f"http://127.0.0.1:{port}/broadcast", body, {}

        answers = asyncio.run(post_stream(measured, args.webhooks, args.interval_ms / 1000, unmeasured, args.channels))
        latencies = clients.collect()
        return summary("floor", latencies, args.webhooks * args.sockets // args.channels, answers)
    finally:
        floor.kill()
        floor.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sockets", type=int, default=1000)
    parser.add_argument("--channels", type=int, default=10)
    parser.add_argument("--webhooks", type=int, default=100)
    parser.add_argument("--interval-ms", type=float, default=50.0)
    parser.add_argument("--client-procs", type=int, default=2)
    parser.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--floor", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--query", default="", help=argparse.SUPPRESS)
    parser.add_argument("--channel-ids", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    # Every socket is a file descriptor in the server and in a client process.
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if args.client:
        client_main(args)
        return
    if args.floor:
        floor_main(args)
        return
    if args.sockets + 100 > hard:
        raise SystemExit(
            f"--sockets {args.sockets} needs a file descriptor limit above {args.sockets + 100} (hard {hard})"
        )
    print(f"load average at start: {os.getloadavg()[0]:.1f} ({os.cpu_count()} cores)")
    print(
        f"fan-out: {args.sockets} sockets over {args.channels} channels ({args.sockets // args.channels} per message), "
        f"{args.webhooks} webhooks every {args.interval_ms:g} ms, {args.client_procs} client processes"
    )
    data_dir = Path(tempfile.mkdtemp(prefix="igsync-fanout-"))
    try:
        result, per_conn, frames, rss = run_igsync(args, data_dir)
        floor = run_floor(args, frames)
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)
    print(f"load average at end: {os.getloadavg()[0]:.1f}")
    print(f"  igsync RSS {rss / 1024:.0f} MiB with the sockets open; {per_conn:.1f} KiB per connection")
    print(
        f"  ratio igsync/floor: p50 {result['p50'] / floor['p50']:.2f}x   p99 {result['p99'] / floor['p99']:.2f}x   "
        f"(frames per message per socket: {len(frames)}, {sum(len(f) for f in frames)} bytes)"
    )


if __name__ == "__main__":
    main()
