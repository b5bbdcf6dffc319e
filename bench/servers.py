"""Servers the benchmarks start as separate processes: igsync itself (instrumented to count its
MongoDB round trips with a PyMongo command listener) and the "floor" — a bare Tornado handler
doing only what any webhook receiver must: HMAC check, JSON parse, one ``insert_one``.

Run as ``python -m bench.servers igsync|floor`` with the settings in the environment; the
process writes its MongoDB command counts to ``$BENCH_COUNTS_FILE`` when it gets SIGTERM.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import signal
import sys
from collections import Counter

import orjson
import tornado.web
from pymongo import monitoring
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets

from config import Settings
from models.store import mongo_client
from server import logs
from server.lifecycle import ServerProcess


class CommandCounter(monitoring.CommandListener):
    """Counts every command sent to MongoDB (one started event = one round trip) and the
    time each kind took, per collection (``"update conversations"``)."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.micros: Counter[str] = Counter()
        self.named: Counter[str] = Counter()  # round trips per kind and collection
        self._names: dict[int, str] = {}

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        self.counts[event.command_name] += 1
        target = event.command.get(event.command_name)
        name = f"{event.command_name} {target}" if isinstance(target, str) else event.command_name
        self.named[name] += 1
        self._names[event.request_id] = name

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        self.micros[self._names.pop(event.request_id, event.command_name)] += event.duration_micros

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        self._names.pop(event.request_id, None)

    def clear(self) -> None:
        self.counts.clear()
        self.micros.clear()
        self.named.clear()


def _dump_counts(counter: CommandCounter) -> None:
    path = os.environ.get("BENCH_COUNTS_FILE")
    if path:
        with open(path, "w") as fh:
            dump = {"counts": counter.counts, "micros": counter.micros, "named": counter.named}
            json.dump({key: dict(value) for key, value in dump.items()}, fh)


async def _run_until_signal(counter: CommandCounter, start) -> None:  # type: ignore[no-untyped-def]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # Counts are reset on SIGUSR1 so a benchmark can measure one phase at a time.
    loop.add_signal_handler(signal.SIGUSR1, counter.clear)
    loop.add_signal_handler(signal.SIGUSR2, lambda: _dump_counts(counter))
    cleanup = await start()
    print("READY", flush=True)
    await stop.wait()
    _dump_counts(counter)
    await cleanup()


def serve_igsync() -> None:
    settings = Settings.from_env(os.environ)
    logs.configure("text", "WARNING")
    counter = CommandCounter()
    process = ServerProcess(settings, mongo_listeners=[counter])

    async def start():  # type: ignore[no-untyped-def]
        await process.start()
        return process.shutdown

    asyncio.run(_run_until_signal(counter, start))


class FloorHandler(tornado.web.RequestHandler):
    """The least a webhook receiver can do: verify, parse, store once."""

    def initialize(self, secret: bytes, collection) -> None:  # type: ignore[no-untyped-def]
        self.secret = secret
        self.collection = collection

    async def post(self) -> None:
        body = self.request.body
        expected = "sha256=" + hmac.new(self.secret, body, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, self.request.headers.get("X-Hub-Signature-256", "")):
            self.set_status(401)
            self.finish(b'{"error":"invalid_signature"}')
            return
        payload = orjson.loads(body)
        await self.collection.insert_one({"payload": payload})
        self.finish(b'{"status":"success"}')


def serve_floor() -> None:
    settings = Settings.from_env(os.environ)
    counter = CommandCounter()

    async def start():  # type: ignore[no-untyped-def]
        client = mongo_client(settings.mongo_url or "", listeners=[counter])
        collection = client[settings.mongo_db]["floor_webhooks"]
        app = tornado.web.Application(
            [
                (
                    r"/webhooks/instagram",
                    FloorHandler,
                    {"secret": (settings.app_secret or "").encode(), "collection": collection},
                )
            ]
        )
        server = HTTPServer(app)
        server.add_sockets(bind_sockets(settings.port, settings.host))

        async def cleanup() -> None:
            server.stop()
            await client.close()

        return cleanup

    asyncio.run(_run_until_signal(counter, start))


if __name__ == "__main__":
    {"igsync": serve_igsync, "floor": serve_floor}[sys.argv[1]]()
