"""Running the server: stores, core, HTTP listener, start-up banner, graceful shutdown.

:class:`ServerProcess` owns one process's life: it resolves the stores (embedded or by
URL), builds the core inside the event loop, listens, and on SIGTERM/SIGINT drains:

1. stop listening (no new connections) and close the request gate (a new request on a
   kept-alive connection answers 503 ``shutting_down``: Meta redelivers elsewhere);
2. wait for the requests in flight, stores still open, up to ``IGSYNC_SHUTDOWN_DRAIN_SECS``
   — an acknowledged webhook is one whose writes and events are done;
3. stop the services in reverse order: WebSockets close with 1001 once their queues are
   flushed (clients resume elsewhere by ``since_seq``), workers finish or release their leases;
4. close the store clients, then whatever HTTP connections remain.

Steps 3–4 have ``SHUTDOWN_SECS`` on top of the drain.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets

from config import Settings
from server.app import devsecrets
from server.app.core import Core, build_core
from server.app.embedded import EMBEDDED_EXPIRY_SWEEP_SECS, EmbeddedStores, running_stores
from server.app.routes import make_app
from server.app.workers import Supervisor
from server.ops import logs
from server.ops.runtime import tune_gc

log = logging.getLogger("igsync.server")

SHUTDOWN_SECS = 10.0
DEMO_PAGE_ID = "17841400000000001"
DEMO_USERNAME = "demo_shop"
DEMO_OWNER = {"id": 1, "email": "demo@example.com"}


@dataclass
class ResolvedStores:
    settings: Settings
    embedded: EmbeddedStores | None

    def stop(self) -> None:
        """Stop the embedded stores, if these are."""
        if self.embedded is not None:
            self.embedded.stop()


def fill_dev_secrets(settings: Settings) -> Settings:
    """In embedded mode, missing secrets come from (or are generated into) the data dir."""
    if settings.production:
        return settings
    return devsecrets.apply(settings, devsecrets.load_or_create(settings.data_dir))


def start_stores(settings: Settings) -> ResolvedStores:
    """Start the embedded stores the settings do not give a URL for (serve owns them)."""
    if settings.production:
        return ResolvedStores(settings, None)
    stores = EmbeddedStores(settings.data_dir, mongo=settings.embedded_mongo, redis=settings.embedded_redis).start()
    changes: dict[str, Any] = {}
    if settings.embedded_mongo:
        changes["mongo_url"] = stores.mongo_url
        # The embedded store's own TTL sweeper is off (server/app/embedded.py): igsync expires.
        if not settings.expiry_sweep_secs:
            changes["expiry_sweep_secs"] = EMBEDDED_EXPIRY_SWEEP_SECS
    if settings.embedded_redis:
        changes["redis_url"] = stores.redis_url
    return ResolvedStores(settings.replace(**changes), stores)


@contextlib.contextmanager
def stores_for_tool(settings: Settings) -> Iterator[Settings]:
    """Store URLs for a CLI tool: configured, those of a running ``igsync serve``, or started now."""
    if settings.production:
        yield settings
        return
    running = running_stores(settings.data_dir)
    if running:
        changes = {}
        if settings.embedded_mongo:
            changes["mongo_url"] = running["mongo_url"]
        if settings.embedded_redis:
            changes["redis_url"] = running["redis_url"]
        yield settings.replace(**changes)
        return
    resolved = start_stores(settings)
    try:
        yield resolved.settings
    finally:
        resolved.stop()


async def ensure_demo_channel(core: Core) -> str | None:
    """Embedded mode's first start connects the fixtures' account and keeps its inbox token."""
    values = devsecrets.load_or_create(core.settings.data_dir)
    token = values.get("demo_inbox_token")
    existing = await core.store.channels.find_connected_by_account(DEMO_PAGE_ID)
    if existing is None and token is None:
        await core.store.channels.connect(DEMO_PAGE_ID, {"username": DEMO_USERNAME, "owner": DEMO_OWNER})
    if token is None or await core.store.tokens.owner_of(token) is None:
        token = await core.store.tokens.create(DEMO_OWNER, label="demo")
        values["demo_inbox_token"] = token
        devsecrets.save(core.settings.data_dir, values)
    return token


def http_server(core: Core, *, xheaders: bool = False) -> HTTPServer:
    """The process's HTTP server, with the limits that keep slow or idle clients from holding
    connections: ``idle_connection_timeout`` also bounds the wait for a request's headers."""
    settings = core.settings
    # Bodies above max_body_bytes are refused by the webhook handler with 413; other
    # endpoints take small JSON, so Tornado's own limit stays near ours.
    return HTTPServer(
        make_app(core),
        max_body_size=settings.max_body_bytes * 8,
        xheaders=xheaders,
        idle_connection_timeout=settings.http_idle_timeout_secs,
        body_timeout=settings.http_body_timeout_secs,
    )


async def drain_requests(core: Core) -> bool:
    """Refuse new requests and wait for those in flight (bounded); True when all finished."""
    # A closed gate also answers /readyz 503, so load balancers stop routing here.
    core.gate.close()
    waiting = core.gate.in_flight
    drained = await core.gate.drained(core.settings.shutdown_drain_secs)
    if drained:
        log.info("drained: %d requests in flight finished", waiting)
    else:
        log.warning(
            "drain deadline (%ss) passed with %d requests in flight; closing anyway",
            core.settings.shutdown_drain_secs,
            core.gate.in_flight,
        )
    return drained


class ServerProcess:
    def __init__(
        self, settings: Settings, *, embedded: EmbeddedStores | None = None, mongo_listeners: list[Any] | None = None
    ) -> None:
        self.settings = settings
        self.embedded = embedded
        self.mongo_listeners = mongo_listeners
        self.core: Core | None = None
        self.http: HTTPServer | None = None
        self.port: int | None = None
        self._stop = asyncio.Event()

    async def start(self, sockets: list[socket.socket] | None = None) -> None:
        """Build the core, start its services, listen (on ``sockets`` a supervisor bound, or
        on sockets of its own)."""
        self.core = await build_core(self.settings, mongo_listeners=self.mongo_listeners)
        await self.core.start()
        self.http = http_server(self.core, xheaders=True)
        if sockets is None:
            sockets = bind_sockets(self.settings.port, self.settings.host)
        self.port = sockets[0].getsockname()[1]
        self.http.add_sockets(sockets)

    def request_stop(self) -> None:
        """Ask the process to stop (signal handlers call this)."""
        self._stop.set()

    async def wait(self) -> None:
        """Wait until a stop is requested."""
        await self._stop.wait()

    async def shutdown(self) -> None:
        """Stop accepting, let requests in flight finish, close the services (sockets 1001,
        workers drain), close the stores — the order in the module docstring."""
        if self.http is not None:
            self.http.stop()
        if self.core is not None:
            await drain_requests(self.core)
            try:
                await asyncio.wait_for(self.core.close(), SHUTDOWN_SECS)
            except TimeoutError:
                log.warning("shutdown took longer than %ss; exiting anyway", SHUTDOWN_SECS)
        if self.http is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.http.close_all_connections(), 2.0)


def banner(settings: Settings, port: int, embedded: EmbeddedStores | None, demo_token: str | None) -> str:
    """What a person needs after ``make run``. Printed to stdout, never logged; in production
    (no embedded stores) it names no secret at all."""
    base = f"http://{settings.host}:{port}"
    lines = [f"igsync listening on {base}"]
    if embedded is not None:
        if embedded.mongo_url:
            lines.append(f"  MongoDB (embedded, SecantusDB): {embedded.mongo_url}")
        if embedded.redis_url:
            lines.append(f"  Redis (embedded):               {embedded.redis_url}")
        lines.append(f"  data directory:                 {embedded.data_dir}")
    lines.append(f"  webhook URL:    {base}/webhooks/instagram")
    if embedded is not None:
        lines.append(f"  verify token:   {settings.verify_token}")
        lines.append(
            f"  dev secrets:    {devsecrets.secrets_path(settings.data_dir)} (app secret, admin and internal tokens)"
        )
    if demo_token:
        lines.append(f"  inbox:          {base}/   sign in with the demo_shop inbox token: {demo_token}")
        lines.append("  try it:         .venv/bin/igsync simulate tests/fixtures/instagram/customer_text.json")
    return "\n".join(lines)


async def serve_async(
    settings: Settings,
    embedded: EmbeddedStores | None,
    *,
    sockets: list[socket.socket] | None = None,
    worker: int = 0,
) -> None:
    """Run one server process (or worker ``worker`` of a supervisor, on its ``sockets``) until
    it is asked to stop, then stop it in order."""
    process = ServerProcess(settings, embedded=embedded)
    await process.start(sockets)
    assert process.core is not None
    loop = asyncio.get_running_loop()
    undo_gc = tune_gc(process.core.metrics, loop)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, process.request_stop)
    assert process.core is not None and process.port is not None
    if worker == 0:  # the banner and the demo channel once, not once per worker
        demo_token = await ensure_demo_channel(process.core) if embedded is not None else None
        print(banner(settings, process.port, embedded, demo_token), flush=True)
    log.info("igsync started on %s:%s (worker %d, pid %d)", settings.host, process.port, worker, os.getpid())
    await process.wait()
    log.info("shutting down")
    await process.shutdown()
    undo_gc()
    log.info("stopped")


def serve(settings: Settings, workers: int = 1) -> int:
    """``igsync serve``: stores resolved (embedded or real), secrets checked, logging set, run
    — in this process, or in ``workers`` pre-forked ones (:mod:`server.app.workers`)."""
    settings = fill_dev_secrets(settings)
    # The dev secrets are known only now: let the log redactor know them too.
    logs.configure(settings.log_format, settings.log_level, secrets=logs.secret_values(settings))
    resolved = start_stores(settings)
    code = 0
    try:
        if workers > 1:

            def worker_main(sockets: list[socket.socket], index: int) -> int:
                asyncio.run(serve_async(resolved.settings, resolved.embedded, sockets=sockets, worker=index))
                sys.stdout.flush()
                return 0

            code = Supervisor(resolved.settings, workers, worker_main).run()
        else:
            asyncio.run(serve_async(resolved.settings, resolved.embedded))
    finally:
        resolved.stop()
    sys.stdout.flush()
    return code
