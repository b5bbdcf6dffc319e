"""Test support for the events/media/profiles tests: a fake Instagram CDN and a fake Graph
API as real local Tornado HTTP servers, and an environment bundling a real igsync server
(with a :class:`RecordingSink`), a connected channel and both fakes."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from bson import ObjectId

from server.app.embedded import EmbeddedStores
from server.inbox.events import RecordingSink
from tests.fakes.cdn import FakeCdn
from tests.fakes.graph import ACCESS_TOKEN, FakeGraphApi
from tests.support.helpers import ACCOUNT_ID, ADMIN_TOKEN, FIXTURES, body_of, fixture_json
from tests.support.server import RunningServer, make_settings, start_server, stop_server

# -- the fake CDN ------------------------------------------------------------------------


# -- the fake Graph API ---------------------------------------------------------------------


# -- bodies ---------------------------------------------------------------------------------------


def fixture_with(
    name: str, *, urls: list[str] | None = None, story_url: str | None = None, mid: str | None = None
) -> bytes:
    """A fixture body with its attachment (or story) URLs pointed at the fake CDN (and,
    to post one fixture several times as different messages, another mid)."""
    payload = copy.deepcopy(fixture_json(name))
    item = payload["entry"][0]["messaging"][0]
    message = item.get("message") or {}
    if mid is not None:
        message["mid"] = mid
    if urls is not None:
        for att, url in zip(message.get("attachments") or [], urls, strict=False):
            att["payload"]["url"] = url
    if story_url is not None:
        message["reply_to"]["story"]["url"] = story_url
    return orjson.dumps(payload)


def fixture_mid(name: str) -> str:
    item = fixture_json(name)["entry"][0]["messaging"][0]
    for key in ("message", "postback", "reaction", "message_edit", "read"):
        if isinstance(item.get(key), dict) and item[key].get("mid"):
            return item[key]["mid"]
    raise KeyError(name)


# Mids of fixtures that other fixtures point at (see tests/fixtures/instagram/README.md).
ECHO_MID = fixture_mid("owner_echo_text")
TEXT_MID = fixture_mid("customer_text")
REPLY_MID = fixture_mid("customer_reply_to_message")


# -- the environment ------------------------------------------------------------------------------


@dataclass
class EventsEnv:
    server: RunningServer
    sink: RecordingSink
    cdn: FakeCdn
    graph: FakeGraphApi
    channel: dict[str, Any]
    token: str

    @property
    def core(self) -> Any:
        return self.server.core

    @property
    def client(self) -> Any:
        return self.server.client

    @property
    def channel_oid(self) -> ObjectId:
        return ObjectId(self.channel["id"])

    async def post(self, body: bytes) -> dict[str, Any]:
        response = await self.client.webhook(body)
        assert response.code == 200, response.body
        return body_of(response)

    async def fixture(self, name: str) -> dict[str, Any]:
        return await self.post((FIXTURES / f"{name}.json").read_bytes())

    async def message(self, mid: str) -> dict[str, Any] | None:
        return await self.core.store.message_updates.find_by_mid(self.channel_oid, mid)

    async def ws_message(self, message_id: str) -> dict[str, Any]:
        """The message as the inbox's REST API shows it."""
        doc = await self.core.store.message_updates.get(ObjectId(message_id))
        assert doc is not None
        response = await self.client.get(
            f"/api/v1/conversations/{doc['conversation_id']}/messages?limit=200", token=self.token
        )
        assert response.code == 200, response.body
        found = [m for m in body_of(response)["messages"] if m["id"] == message_id]
        assert len(found) == 1
        return found[0]

    def events(self, name: str | None = None) -> list[Any]:
        return [e for e in self.sink.events if name is None or e.name == name]

    async def clear_events(self) -> None:
        """Forget the events so far, once background work started by them (profile
        look-ups of new customers publish conversation_updated) has settled."""
        await self.core.profiles.idle()
        self.sink.events.clear()


@contextlib.asynccontextmanager
async def events_env(
    stores: EmbeddedStores, tmp_path: Path, *, realtime: bool = False, **overrides: Any
) -> AsyncIterator[EventsEnv]:
    """A real server with both fakes. Events go to a RecordingSink, or with ``realtime`` to
    the real hub (read them with a WebSocket client)."""
    cdn = FakeCdn().start()
    graph = FakeGraphApi().start()
    values: dict[str, Any] = dict(
        graph_api_url=graph.url,
        facebook_graph_api_url=graph.url,
        graph_api_timeout_secs=2.0,
        profile_retry_base_secs=0.05,
        media_concurrency=4,
        media_max_bytes=256 * 1024,
        media_timeout_secs=2.0,
        media_lease_secs=5.0,
        media_retry_base_secs=0.05,
        media_poll_secs=0.2,
        media_max_attempts=3,
    )
    values.update(overrides)
    transcriber = values.pop("transcriber_object", None)
    listeners = values.pop("mongo_listeners", None)
    settings = make_settings(stores, tmp_path, **values)
    sink = RecordingSink()
    server = await start_server(
        settings, sink=None if realtime else sink, transcriber=transcriber, mongo_listeners=listeners
    )
    try:
        channel, token = await connect_channel(server)
        yield EventsEnv(server, sink, cdn, graph, channel, token)
    finally:
        await stop_server(server)
        await cdn.stop()
        await graph.stop()


async def connect_channel(server: RunningServer, *, access_token: str = ACCESS_TOKEN) -> tuple[dict[str, Any], str]:
    client = server.client
    response = await client.post(
        "/api/v1/channels",
        {
            "page_id": ACCOUNT_ID,
            "username": "shop",
            "owner": {"id": 1, "email": "owner@example.com"},
            "access_token": access_token,
        },
        token=ADMIN_TOKEN,
    )
    assert response.code in (200, 201), response.body
    channel = body_of(response)["channel"]
    response = await client.post("/api/v1/tokens", {"owner_email": "owner@example.com"}, token=ADMIN_TOKEN)
    assert response.code == 201, response.body
    return channel, body_of(response)["token"]
