"""Running the server: stores, core, HTTP listener, start-up banner, graceful shutdown.

:class:`ServerProcess` owns one process's life: it resolves the stores (embedded or by
URL), builds the core inside the event loop, listens, and on SIGTERM/SIGINT stops
accepting, lets the services close their sockets (1001, so clients reconnect elsewhere)
and drain, then closes the store clients — within ``SHUTDOWN_SECS``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets

from config import Settings
from server.app import devsecrets
from server.app.core import Core, build_core
from server.app.embedded import EmbeddedStores, running_stores
from server.app.routes import make_app
from server.ops import logs

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

    async def start(self) -> None:
        """Build the core, start its services, listen."""
        self.core = await build_core(self.settings, mongo_listeners=self.mongo_listeners)
        await self.core.start()
        app = make_app(self.core)
        # Bodies above max_body_bytes are refused by the webhook handler with 413; other
        # endpoints take small JSON, so Tornado's own limit stays near ours.
        self.http = HTTPServer(app, max_body_size=self.settings.max_body_bytes * 8, xheaders=True)
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
        """Stop accepting, close the services (sockets 1001, workers drain), close the stores."""
        if self.http is not None:
            self.http.stop()
        if self.core is not None:
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


async def serve_async(settings: Settings, embedded: EmbeddedStores | None) -> None:
    """Run one server process until it is asked to stop, then stop it in order."""
    process = ServerProcess(settings, embedded=embedded)
    await process.start()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, process.request_stop)
    assert process.core is not None and process.port is not None
    demo_token = await ensure_demo_channel(process.core) if embedded is not None else None
    print(banner(settings, process.port, embedded, demo_token), flush=True)
    log.info("igsync started on %s:%s", settings.host, process.port)
    await process.wait()
    log.info("shutting down")
    await process.shutdown()
    log.info("stopped")


def serve(settings: Settings) -> int:
    """``igsync serve``: stores resolved (embedded or real), secrets checked, logging set, run."""
    settings = fill_dev_secrets(settings)
    # The dev secrets are known only now: let the log redactor know them too.
    logs.configure(settings.log_format, settings.log_level, secrets=logs.secret_values(settings))
    resolved = start_stores(settings)
    try:
        asyncio.run(serve_async(resolved.settings, resolved.embedded))
    finally:
        resolved.stop()
    sys.stdout.flush()
    return 0
