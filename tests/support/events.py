"""Test support for the events/media/profiles tests: a fake Instagram CDN and a fake Graph
API as real local Tornado HTTP servers, and an environment bundling a real igsync server
(with a :class:`RecordingSink`), a connected channel and both fakes."""

from __future__ import annotations

import asyncio
import contextlib
import copy
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import tornado.web
from bson import ObjectId
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets

from server.app.embedded import EmbeddedStores
from server.inbox.events import RecordingSink
from tests.conftest import RunningServer, make_settings, start_server, stop_server
from tests.helpers import ACCOUNT_ID, ADMIN_TOKEN, body_of, fixture_json

ACCESS_TOKEN = "IGQVJ-test-channel-access-token-0123456789"
# Smallest valid files of each kind the CDN serves (magic bytes matter for sniffing).
JPEG = b"\xff\xd8\xff\xe0" + b"\x00\x10JFIF" + bytes(range(256)) * 8
MP4 = b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 4
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(255, -1, -1)) * 8
PDF = b"%PDF-1.4\n" + b"0" * 1000


def _quiet(handler: tornado.web.RequestHandler) -> None:
    return None


class _LocalServer:
    """A Tornado app on a free loopback port; quiet (a fake's access log would print the
    tokens igsync must never log)."""

    def __init__(self) -> None:
        self.http: HTTPServer | None = None
        self.port = 0

    def routes(self) -> list[Any]:
        raise NotImplementedError

    def start(self) -> Any:
        sockets = bind_sockets(0, "127.0.0.1")
        self.port = sockets[0].getsockname()[1]
        self.http = HTTPServer(tornado.web.Application(self.routes(), log_function=_quiet))
        self.http.add_sockets(sockets)
        return self

    async def stop(self) -> None:
        if self.http is not None:
            self.http.stop()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.http.close_all_connections(), 1.0)


# -- the fake CDN ------------------------------------------------------------------------


@dataclass
class CdnFile:
    body: bytes = JPEG
    content_type: str | None = "image/jpeg"
    status: int = 200
    # Requests answered with 503 before the file is served.
    fail_times: int = 0
    # Seconds to wait before answering (a slow CDN); only the first ``slow_times`` requests.
    delay_secs: float = 0.0
    slow_times: int = 1_000_000
    # Send the body in chunks without Content-Length.
    chunked: bool = False
    # Held until the test opens it, for the first ``gated_times`` requests.
    gate: asyncio.Event | None = None
    gated_times: int = 1_000_000


class _CdnHandler(tornado.web.RequestHandler):
    def initialize(self, cdn: FakeCdn) -> None:
        self.cdn = cdn

    async def get(self, name: str) -> None:
        self.cdn.requests.append(name)
        spec = self.cdn.files.get(name)
        if spec is None:
            self.set_status(404)
            self.finish("URL signature expired")
            return
        count = self.cdn.requests.count(name)
        if spec.delay_secs and count <= spec.slow_times:
            await asyncio.sleep(spec.delay_secs)
        if spec.gate is not None and count <= spec.gated_times:
            await spec.gate.wait()
            if self.request.connection.stream.closed():  # type: ignore[attr-defined]
                return
        if count <= spec.fail_times:
            self.set_status(503)
            self.finish("try later")
            return
        self.set_status(spec.status)
        if spec.content_type:
            self.set_header("Content-Type", spec.content_type)
        else:
            self.clear_header("Content-Type")
        if spec.chunked:
            for i in range(0, len(spec.body), 16384):
                self.write(spec.body[i : i + 16384])
                await self.flush()
            self.finish()
        else:
            self.finish(spec.body)


class FakeCdn(_LocalServer):
    """Serves ``/cdn/<name>`` as registered; anything unregistered is an expired link (404)."""

    def __init__(self) -> None:
        super().__init__()
        self.files: dict[str, CdnFile] = {}
        self.requests: list[str] = []

    def routes(self) -> list[Any]:
        return [(r"/cdn/([^/?]+)", _CdnHandler, {"cdn": self})]

    def add(self, name: str, **spec: Any) -> str:
        self.files[name] = CdnFile(**spec)
        return self.url(name)

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/cdn/{name}?oh=FAKE_SIGNATURE&oe=FAKE"

    def count(self, name: str) -> int:
        return self.requests.count(name)


# -- the fake Graph API ---------------------------------------------------------------------


@dataclass
class GraphAnswer:
    status: int = 200
    body: dict[str, Any] = field(default_factory=dict)
    delay_secs: float = 0.0
    # Held until the test opens it: proves a caller does not wait for this answer.
    gate: asyncio.Event | None = None


class _GraphHandler(tornado.web.RequestHandler):
    def initialize(self, graph: FakeGraphApi) -> None:
        self.graph = graph

    async def get(self, version: str, user_id: str) -> None:
        self.graph.requests.append(
            {
                "version": version,
                "user_id": user_id,
                "fields": self.get_query_argument("fields", None),
                "access_token": self.get_query_argument("access_token", None),
            }
        )
        answers = self.graph.answers.get(user_id) or [GraphAnswer(404, _meta_error(100, "Unsupported get request"))]
        answer = answers[min(len(self.graph.requests_for(user_id)) - 1, len(answers) - 1)]
        self.graph.inflight += 1
        self.graph.max_inflight = max(self.graph.max_inflight, self.graph.inflight)
        try:
            if answer.delay_secs:
                await asyncio.sleep(answer.delay_secs)
            if answer.gate is not None:
                await answer.gate.wait()
        finally:
            self.graph.inflight -= 1
        if self.get_query_argument("access_token", "") != self.graph.valid_token:
            answer = GraphAnswer(400, _meta_error(190, "Error validating access token: Session has expired"))
        self.set_status(answer.status)
        self.set_header("Content-Type", "application/json")
        self.finish(orjson.dumps(answer.body))


def _meta_error(code: int, message: str, subcode: int | None = None) -> dict[str, Any]:
    error: dict[str, Any] = {"message": message, "type": "IGApiException", "code": code, "fbtrace_id": "Afake"}
    if subcode is not None:
        error["error_subcode"] = subcode
    return {"error": error}


class FakeGraphApi(_LocalServer):
    """``GET /<version>/<igsid>?fields=…&access_token=…`` like graph.instagram.com."""

    def __init__(self, valid_token: str = ACCESS_TOKEN) -> None:
        super().__init__()
        self.valid_token = valid_token
        self.answers: dict[str, list[GraphAnswer]] = {}
        self.requests: list[dict[str, Any]] = []
        self.inflight = 0
        self.max_inflight = 0

    def routes(self) -> list[Any]:
        return [(r"/(v[0-9.]+)/([^/?]+)", _GraphHandler, {"graph": self})]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def profile(self, user_id: str, **fields: Any) -> None:
        self.answers[user_id] = [GraphAnswer(200, {"id": user_id, **fields})]

    def error(self, user_id: str, code: int, *, status: int = 400, message: str = "error") -> None:
        self.answers[user_id] = [GraphAnswer(status, _meta_error(code, message))]

    def sequence(self, user_id: str, *answers: GraphAnswer) -> None:
        self.answers[user_id] = list(answers)

    def requests_for(self, user_id: str) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["user_id"] == user_id]


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
        return await self.post((Path(__file__).parent / "fixtures" / "instagram" / f"{name}.json").read_bytes())

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
    settings = make_settings(stores, tmp_path, **values)
    sink = RecordingSink()
    server = await start_server(settings, sink=None if realtime else sink, transcriber=transcriber)
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
