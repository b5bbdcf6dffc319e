"""A fake trigger receiver: a real local HTTP server that records every delivery.

What it answers is decided per request by a *behaviour* — a coroutine of (payload, attempt)
returning (status, headers) — so a test can make it answer 200, 500, 429 with Retry-After,
hang past the timeout, or be down (not listening at all: :meth:`TriggerReceiver.stop`, then
start again on the same port). It also measures how many deliveries of one conversation are in
flight at once.
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
