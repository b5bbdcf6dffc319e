"""Servers the benchmarks start as separate processes: igsync itself (instrumented to count its
MongoDB round trips with a PyMongo command listener); the "floor" — a bare Tornado handler
doing only what any webhook receiver must: HMAC check, JSON parse, one ``insert_one``; and the
"required writes" — a bare handler that also writes what every message requires (audit record,
message under its unique mid index, conversation, answered marks), the plainest correct way,
and nothing else (see ``RequiredWritesHandler``).

Run as ``python -m bench.servers igsync|floor|required`` with the settings in the environment; the
process writes its MongoDB command counts to ``$BENCH_COUNTS_FILE`` when it gets SIGTERM.
"""

from __future__ import annotations

import asyncio
import cProfile
import datetime as dt
import hashlib
import hmac
import json
import os
import signal
import sys
from collections import Counter
from typing import Any

import orjson
import tornado.web
from pymongo import ASCENDING, ReturnDocument, monitoring
from pymongo.errors import DuplicateKeyError
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets

from config import Settings
from models.store import mongo_client
from server.app.core import Core
from server.app.lifecycle import ServerProcess
from server.ingest.pipeline import WebhookResponse
from server.ops import logs
from server.ops.runtime import tune_gc


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


class PhaseProfiler:
    """``BENCH_PROFILE=path``: cProfile of the first measured phase (SIGUSR1 to SIGUSR2), its
    stats written to ``path`` (read with ``python -m pstats path``). Off by default: the
    profiler's own cost would be in the CPU figures."""

    def __init__(self, path: str | None) -> None:
        self.path = path
        self.profile: cProfile.Profile | None = None

    def start(self) -> None:
        if self.path and self.profile is None:
            self.profile = cProfile.Profile()
            self.profile.enable()

    def stop(self) -> None:
        if self.profile is not None and self.path:
            self.profile.disable()
            self.profile.dump_stats(self.path)
            self.path = None


async def _run_until_signal(counter: CommandCounter, start) -> None:  # type: ignore[no-untyped-def]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    profiler = PhaseProfiler(os.environ.get("BENCH_PROFILE"))

    # Counts are reset on SIGUSR1 so a benchmark can measure one phase at a time.
    def phase_starts() -> None:
        counter.clear()
        profiler.start()

    def phase_ends() -> None:
        profiler.stop()
        _dump_counts(counter)

    loop.add_signal_handler(signal.SIGUSR1, phase_starts)
    loop.add_signal_handler(signal.SIGUSR2, phase_ends)
    cleanup = await start()
    print("READY", flush=True)
    await stop.wait()
    _dump_counts(counter)
    await cleanup()


async def _skipped(*args: Any, **kwargs: Any) -> None:
    return None


async def _answered_unread(*args: Any, **kwargs: Any) -> WebhookResponse:
    return WebhookResponse(200, {"status": "success"}, "processed")


def _without_parts(core: Core, parts: str) -> None:
    """``BENCH_WITHOUT=publish,audit,items``: igsync with parts of a webhook's work skipped, to
    attribute its CPU (``items``: signature, parse and answer only). For measuring, never a
    mode to run: skipping any of them breaks what the API promises."""
    wanted = {part for part in parts.split(",") if part}
    if "publish" in wanted and core.realtime is not None:
        core.realtime.publish = _skipped  # type: ignore[method-assign]
    if "audit" in wanted:
        core.pipeline.audit.add = lambda doc: None  # type: ignore[method-assign]
    if "items" in wanted:
        core.pipeline.process_items = _answered_unread  # type: ignore[method-assign,assignment]


def serve_igsync() -> None:
    settings = Settings.from_env(os.environ)
    logs.configure("text", "WARNING")
    counter = CommandCounter()
    process = ServerProcess(settings, mongo_listeners=[counter])

    async def start():  # type: ignore[no-untyped-def]
        await process.start()
        assert process.core is not None
        tune_gc(process.core.metrics, asyncio.get_running_loop())  # as `igsync serve` runs (server/ops/runtime.py)
        _without_parts(process.core, os.environ.get("BENCH_WITHOUT", ""))
        if os.environ.get("BENCH_CLIENT_BULK_WRITE"):
            # What MongoDB 8.0+ gets (one client bulkWrite where it can), on the embedded store:
            # its round trips and igsync's CPU as with a real MongoDB 8. For measuring only — the
            # embedded store does not journal a client bulkWrite (models/store.adapt_to_server).
            process.core.store.messages.use_client_bulk_write(True)
            process.core.store.conversations.use_client_bulk_write(True)
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
        await self.store(body, orjson.loads(body))
        self.finish(b'{"status":"success"}')

    async def store(self, body: bytes, payload: dict) -> None:  # type: ignore[type-arg]
        await self.collection.insert_one({"payload": payload})


class RequiredWritesHandler(FloorHandler):
    """The floor plus the store writes every message requires, written the plainest
    way that is still correct under concurrency, and nothing more: the raw body into the audit
    collection; the message into a collection whose unique ``(channel_id, mid)`` index decides
    "duplicate"; the conversation's last message, status and unread count; for an owner
    message, the earlier customer messages marked answered. Customers and conversations are
    upserted on first sight and then remembered in the process, as igsync does. No channel
    look-up, no direction by channel ids, no echo pairing, no orphan events, no events, no
    metrics, and the last message is whichever came last, not the newest: it is the cost of the
    writes alone, so the benchmark can tell the store's share of the ratio from igsync's own."""

    def initialize(self, secret: bytes, db, conversations_by_customer: dict[str, object]) -> None:  # type: ignore[no-untyped-def,override]
        self.secret = secret
        self.db = db
        self.conversations_by_customer = conversations_by_customer

    async def store(self, body: bytes, payload: dict) -> None:  # type: ignore[type-arg]
        now = dt.datetime.now(dt.UTC)
        await self.db.webhook_events.insert_one({"body": body, "received_at": now})
        for entry in payload["entry"]:
            for item in entry.get("messaging", []):
                await self._store(entry["id"], item, now)

    async def _store(self, account: str, item: dict, now: dt.datetime) -> None:  # type: ignore[type-arg]
        message = item["message"]
        owner = item["sender"]["id"] == account
        customer = item["recipient"]["id"] if owner else item["sender"]["id"]
        conversation_id = self.conversations_by_customer.get(customer)
        if conversation_id is None:
            found = await _get_or_create(self.db.customers, {"igsid": customer}, {"created_at": now})
            conversation = await _get_or_create(
                self.db.conversations, {"customer_id": found["_id"]}, {"created_at": now, "unread_count": 0}
            )
            conversation_id = self.conversations_by_customer[customer] = conversation["_id"]
        sent_at = dt.datetime.fromtimestamp(item["timestamp"] / 1000, dt.UTC)
        kind = "support" if owner else "customer"
        doc = {
            "channel_id": account,
            "mid": message["mid"],
            "conversation_id": conversation_id,
            "type": kind,
            "content": message.get("text"),
            "message_type": "text",
            "sent_at": sent_at,
            "created_at": now,
            "is_answered": owner,
        }
        try:
            await self.db.messages.insert_one(doc)
        except DuplicateKeyError:
            return
        update: dict = {"$set": {"last_message": doc["content"], "updated_at": now}}  # type: ignore[type-arg]
        if owner:
            update["$set"].update(status="answered", unread_count=0)
        else:
            update["$set"]["status"] = "needs_reply"
            update["$inc"] = {"unread_count": 1}
        await self.db.conversations.update_one({"_id": conversation_id}, update)
        if owner:
            await self.db.messages.update_many(
                {"conversation_id": conversation_id, "is_answered": False, "sent_at": {"$lte": sent_at}},
                {"$set": {"is_answered": True}},
            )


async def _get_or_create(coll, key: dict, fields: dict) -> dict:  # type: ignore[no-untyped-def,type-arg]
    # Two first messages of a new customer race here: the loser of the upsert gets a duplicate
    # key error (or, on SecantusDB, no document); the winner's document is then there to read.
    try:
        found = await coll.find_one_and_update(
            key, {"$setOnInsert": fields}, upsert=True, return_document=ReturnDocument.AFTER
        )
    except DuplicateKeyError:
        found = None
    return found if found is not None else await coll.find_one(key)


async def _required_indexes(db) -> None:  # type: ignore[no-untyped-def]
    await db.webhook_events.create_index("received_at", expireAfterSeconds=7 * 86400)
    await db.customers.create_index("igsid", unique=True)
    await db.conversations.create_index("customer_id", unique=True)
    await db.conversations.create_index([("updated_at", ASCENDING)])
    await db.messages.create_index([("channel_id", ASCENDING), ("mid", ASCENDING)], unique=True)
    await db.messages.create_index([("conversation_id", ASCENDING), ("sent_at", ASCENDING)])
    await db.messages.create_index([("conversation_id", ASCENDING), ("is_answered", ASCENDING), ("sent_at", ASCENDING)])


def serve_floor(kind: str = "floor") -> None:
    settings = Settings.from_env(os.environ)
    counter = CommandCounter()

    async def start():  # type: ignore[no-untyped-def]
        client = mongo_client(settings.mongo_url or "", listeners=[counter])
        secret = (settings.app_secret or "").encode()
        if kind == "floor":
            route = (
                r"/webhooks/instagram",
                FloorHandler,
                {"secret": secret, "collection": client[settings.mongo_db]["floor_webhooks"]},
            )
        else:
            db = client[settings.mongo_db]
            await _required_indexes(db)
            route = (
                r"/webhooks/instagram",
                RequiredWritesHandler,
                {"secret": secret, "db": db, "conversations_by_customer": {}},
            )
        app = tornado.web.Application([route])
        server = HTTPServer(app)
        server.add_sockets(bind_sockets(settings.port, settings.host))

        async def cleanup() -> None:
            server.stop()
            await client.close()

        return cleanup

    asyncio.run(_run_until_signal(counter, start))


if __name__ == "__main__":
    {"igsync": serve_igsync, "floor": serve_floor, "required": lambda: serve_floor("required")}[sys.argv[1]]()
