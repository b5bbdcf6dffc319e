"""Support for the trigger tests: a real receiver, fast settings, channel and message helpers.

The receiver is a Tornado HTTP server on a loopback port.

Every request is recorded (raw body, headers, the answer given). What it answers is decided
per request by a *behaviour* — a coroutine of (payload, attempt) returning (status, headers)
— so a test can make it answer 200, 500, 429 with Retry-After, hang past the timeout, or
be down (not listening at all: :meth:`TriggerReceiver.stop`, then start again on the same port).
It also measures how many deliveries of one conversation are in flight at once.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
import tornado.web
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets

from igsync_client.triggers import verify_trigger_signature
from server.app.embedded import free_port
from tests.helpers import ACCOUNT_ID, ADMIN_TOKEN, CUSTOMER_A, body_of, messaging_body, text_item

TRIGGER_SECRET = "test-trigger-secret-0123456789abcdef"

Behaviour = Callable[[dict[str, Any], int], Awaitable[tuple[int, dict[str, str]]]]


async def always_ok(payload: dict[str, Any], attempt: int) -> tuple[int, dict[str, str]]:
    return 200, {}


@dataclass
class Delivery:
    body: bytes
    headers: dict[str, str]
    payload: dict[str, Any]
    attempt: int
    received_at: float
    status: int = 0

    @property
    def delivery_id(self) -> str:
        return self.payload["delivery_id"]

    @property
    def conversation_id(self) -> str:
        return self.payload["conversation"]["id"]

    @property
    def content(self) -> str:
        return self.payload["message"]["content"]


@dataclass
class TriggerReceiver:
    secret: str = TRIGGER_SECRET
    behaviour: Behaviour = always_ok
    port: int = field(default_factory=free_port)
    deliveries: list[Delivery] = field(default_factory=list)
    max_in_flight: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    _in_flight: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    _server: HTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def start(self) -> TriggerReceiver:
        app = tornado.web.Application([(r"/hook", _Hook, {"receiver": self})])
        self._server = HTTPServer(app)
        self._server.add_sockets(bind_sockets(self.port, "127.0.0.1"))
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            await self._server.close_all_connections()
            self._server = None

    # -- what arrived ------------------------------------------------------------------

    def acked(self) -> list[Delivery]:
        return [d for d in self.deliveries if 200 <= d.status < 300]

    def acked_contents(self, conversation_id: str | None = None) -> list[str]:
        return [d.content for d in self.acked() if conversation_id is None or d.conversation_id == conversation_id]

    def ack_counts(self) -> Counter[str]:
        return Counter(d.delivery_id for d in self.acked())


class _Hook(tornado.web.RequestHandler):
    def initialize(self, receiver: TriggerReceiver) -> None:
        self.receiver = receiver

    async def post(self) -> None:
        r = self.receiver
        body = self.request.body
        assert verify_trigger_signature(body, self.request.headers.get("X-Igsync-Signature-256", ""), r.secret)
        payload = orjson.loads(body)
        delivery = Delivery(
            body=body,
            headers=dict(self.request.headers),
            payload=payload,
            attempt=int(self.request.headers.get("X-Igsync-Attempt", "0")),
            received_at=time.monotonic(),
        )
        r.deliveries.append(delivery)
        conversation_id = delivery.conversation_id
        r._in_flight[conversation_id] += 1
        r.max_in_flight[conversation_id] = max(r.max_in_flight[conversation_id], r._in_flight[conversation_id])
        try:
            status, headers = await r.behaviour(payload, delivery.attempt)
        except asyncio.CancelledError:
            raise
        finally:
            r._in_flight[conversation_id] -= 1
        delivery.status = status
        self.set_status(status)
        for name, value in headers.items():
            self.set_header(name, value)
        self.finish(b"{}" if status < 300 else b'{"error": "receiver said no"}')


# -- igsync side -------------------------------------------------------------------------

# Fast retry and lease timings so that the tests observe whole retry schedules in seconds.
FAST_TRIGGERS = {
    "trigger_retry_base_secs": 0.05,
    "trigger_retry_max_secs": 2.0,
    "trigger_poll_secs": 0.1,
    "trigger_lease_margin_secs": 2.0,
}


def http_triggers(url: str, *, secret: str = TRIGGER_SECRET, **extra: Any) -> dict[str, Any]:
    return {"http": {"url": url, "secret": secret, **extra}, "redis_stream": False}


async def connect_with_triggers(
    client: Any,
    triggers: dict[str, Any] | None,
    *,
    ai_enabled: bool | None = None,
    page_id: str = ACCOUNT_ID,
    username: str = "shop",
) -> dict[str, Any]:
    """Connect (or re-post) the fixtures' channel with these triggers; the Channel answered."""
    body: dict[str, Any] = {
        "page_id": page_id,
        "username": username,
        "owner": {"id": 1, "email": "owner@example.com"},
        "triggers": triggers,
    }
    if ai_enabled is not None:
        body["ai_enabled"] = ai_enabled
    response = await client.post("/api/v1/channels", body, token=ADMIN_TOKEN)
    assert response.code in (200, 201), response.body
    return body_of(response)["channel"]


class MessageSender:
    """Customer messages with rising Instagram timestamps and unique mids."""

    def __init__(self, client: Any, prefix: str = "m") -> None:
        self.client = client
        self.prefix = prefix
        self.n = 0
        self.base_ms = int(time.time() * 1000)

    async def send(self, text: str, *, customer: str = CUSTOMER_A) -> dict[str, Any]:
        self.n += 1
        item = text_item(f"{self.prefix}-{self.n}", text, sender=customer, timestamp_ms=self.base_ms + self.n)
        response = await self.client.webhook(messaging_body(item))
        assert response.code == 200, response.body
        return body_of(response)
