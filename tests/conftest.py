"""Shared fixtures: real embedded stores for the session, a fresh database and a real
igsync HTTP server per test.

The stores are the same SecantusDB and Redis servers ``igsync serve`` embeds, started by
:mod:`server.app.embedded` on free loopback ports. Each test gets its own MongoDB database
(dropped afterwards); Redis keys are namespaced by ids that are unique per test.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets

from config import Settings
from server.app.core import Core, build_core
from server.app.embedded import EmbeddedStores
from server.app.routes import make_app
from tests.helpers import (
    ACCOUNT_ID,
    ADMIN_TOKEN,
    ALL_SECRETS,
    APP_SECRET,
    INTERNAL_TOKEN,
    VERIFY_TOKEN,
    Client,
    body_of,
)
from tests.log_audit import AUDIT, LogAuditPlugin

pytest_plugins = ["tests.triggers_fixtures", "tests.events_fixtures"]


def pytest_configure(config: pytest.Config) -> None:
    # Every log line of the session is checked for secrets, tokens and signatures; a leak
    # fails the session (tests/log_audit.py).
    config.pluginmanager.register(LogAuditPlugin(AUDIT, ALL_SECRETS), "igsync_log_audit")


@pytest.fixture(scope="session", autouse=True)
def _audit_output_files(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Subprocess servers write their output under the session's temp directory."""
    AUDIT.note_output_dir(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="session")
def stores(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedStores]:
    embedded = EmbeddedStores(tmp_path_factory.mktemp("stores"), lock=False).start()
    yield embedded
    embedded.stop()


def make_settings(stores: EmbeddedStores, data_dir: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = dict(
        host="127.0.0.1",
        port=0,
        mongo_url=stores.mongo_url,
        redis_url=stores.redis_url,
        mongo_db="t_" + uuid.uuid4().hex[:12],
        data_dir=str(data_dir),
        app_secret=APP_SECRET,
        verify_token=VERIFY_TOKEN,
        admin_token=ADMIN_TOKEN,
        internal_tokens=(INTERNAL_TOKEN,),
        store_timeout_ms=1500,
        channel_cache_secs=0.0,
        # No media worker unless a test asks for one: the fixtures' attachment URLs are
        # Meta's CDN, never to be fetched from a test (tests/events_support.py turns the
        # worker on against a local fake CDN).
        media_concurrency=0,
    )
    values.update(overrides)
    return Settings(**values)


@pytest.fixture
def settings(stores: EmbeddedStores, tmp_path: Path) -> Settings:
    return make_settings(stores, tmp_path)


@dataclass
class RunningServer:
    core: Core
    http: HTTPServer
    port: int
    client: Client

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


async def start_server(settings: Settings, **core_kwargs: Any) -> RunningServer:
    core = await build_core(settings, **core_kwargs)
    await core.start()
    app = make_app(core)
    http = HTTPServer(app, max_body_size=settings.max_body_bytes * 8)
    sockets = bind_sockets(0, "127.0.0.1")
    http.add_sockets(sockets)
    port = sockets[0].getsockname()[1]
    return RunningServer(core, http, port, Client(f"http://127.0.0.1:{port}"))


async def stop_server(server: RunningServer, *, drop: bool = True) -> None:
    server.http.stop()
    server.client.close()
    if drop:
        try:
            await server.core.store.client.drop_database(server.core.settings.mongo_db)
        except Exception:
            pass
    await server.core.close()


@pytest.fixture
async def server(settings: Settings) -> AsyncIterator[RunningServer]:
    running = await start_server(settings)
    yield running
    await stop_server(running)


@pytest.fixture
def client(server: RunningServer) -> Client:
    return server.client


@dataclass
class Tenant:
    channel: dict[str, Any]
    token: str
    owner: dict[str, Any]


async def connect_tenant(
    client: Client,
    *,
    page_id: str = ACCOUNT_ID,
    owner_id: Any = 1,
    email: str = "owner@example.com",
    username: str = "shop",
    instagram_user_id: str | None = None,
) -> Tenant:
    body: dict[str, Any] = {"page_id": page_id, "username": username, "owner": {"id": owner_id, "email": email}}
    if instagram_user_id:
        body["instagram_user_id"] = instagram_user_id
    response = await client.post("/api/v1/channels", body, token=ADMIN_TOKEN)
    assert response.code in (200, 201), response.body
    channel = body_of(response)["channel"]
    response = await client.post("/api/v1/tokens", {"owner_email": email}, token=ADMIN_TOKEN)
    assert response.code == 201, response.body
    token = body_of(response)["token"]
    return Tenant(channel, token, {"id": owner_id, "email": email})


@pytest.fixture
async def tenant(client: Client) -> Tenant:
    """The fixtures' business account, connected, with an inbox token."""
    return await connect_tenant(client)
