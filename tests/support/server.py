"""A real igsync server in the test's event loop: settings on the embedded stores, start/stop,
and a tenant (a connected channel with an inbox token) on it.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets

from config import Settings
from server.app.core import Core, build_core
from server.app.embedded import EmbeddedStores
from server.app.lifecycle import http_server
from tests.support.helpers import (
    ACCOUNT_ID,
    ADMIN_TOKEN,
    APP_SECRET,
    INTERNAL_TOKEN,
    VERIFY_TOKEN,
    Client,
    body_of,
)


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
        # Meta's CDN, never to be fetched from a test (tests/support/events.py turns the
        # worker on against a local fake CDN).
        media_concurrency=0,
        # Never Meta from a test: a call nobody faked is refused at once (port 9 listens nowhere).
        graph_api_url="http://127.0.0.1:9",
        facebook_graph_api_url="http://127.0.0.1:9",
    )
    # The session's Redis topology (IGSYNC_TEST_REDIS), unless the test brings its own Redis.
    topology = getattr(stores, "redis_topology", None)
    if topology is not None and "redis_url" not in overrides:
        values.update(topology.settings())
    values.update(overrides)
    return Settings(**values)


def on_single_redis(settings: Settings, url: str) -> Settings:
    """The settings on one Redis node of the test's own (a test that stops or freezes it),
    whatever topology the session runs on."""
    return settings.replace(redis_url=url, redis_cluster=False, redis_sentinels=())


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
    http = http_server(core)
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
