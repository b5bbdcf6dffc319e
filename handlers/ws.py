"""``GET /ws`` (API.md §4): authenticate before the upgrade, then hand frames to a session.

Thin: the token, origin and command rules live in :mod:`server.realtime.access` and
:mod:`server.realtime.session`; delivery in :mod:`server.realtime.hub`. A bad token is answered
``401`` (a token of another kind ``403``) with the JSON error body *before* the upgrade.
The query string (which may hold ``access_token``) never reaches a log line: Tornado's
request summary is replaced by method + path.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

import orjson
import tornado.iostream
import tornado.web
import tornado.websocket

from handlers.base import allowed_methods
from server.api.auth import INBOX, Authenticator
from server.api.errors import ApiError
from server.realtime import wire as ws_wire
from server.realtime.access import origin_allowed, token_from
from server.realtime.session import WsSession

if TYPE_CHECKING:
    # Only the type: the wiring (server.app) imports handlers, never the other way round.
    from server.app.core import Core

log = logging.getLogger("igsync.http")


class TornadoTransport:
    """The session's view of a Tornado WebSocket: a batch of text frames, one stream write."""

    def __init__(self, handler: tornado.websocket.WebSocketHandler) -> None:
        self.handler = handler

    def send(self, frames: list[bytes]) -> Any:
        """Write frames in order; resolves once flushed, raises on a closed socket."""
        connection = self.handler.ws_connection
        if connection is None or connection.is_closing():
            raise tornado.websocket.WebSocketClosedError()
        stream = getattr(connection, "stream", None)
        if stream is None:  # not Tornado's RFC 6455 protocol: frame by frame, its way
            return asyncio.gather(*(self.handler.write_message(f) for f in frames))
        try:
            return stream.write(ws_wire.text_frames(frames))
        except tornado.iostream.StreamClosedError:
            raise tornado.websocket.WebSocketClosedError() from None

    def close(self, code: int, reason: str) -> None:
        """Close the socket with ``code`` and ``reason``."""
        self.handler.close(code, reason)


class WebSocketHandler(tornado.websocket.WebSocketHandler):
    session: WsSession | None = None

    @property
    def core(self) -> Core:
        """The process's core, injected through the application settings."""
        return self.settings["igsync_core"]

    def _refuse(self, error: ApiError) -> None:
        self.set_status(error.status)
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.set_header("Cache-Control", "no-store")
        self.finish(orjson.dumps(error.body()))

    async def get(self, *args: Any, **kwargs: Any) -> None:
        """Authorize the upgrade (token, origin), then accept it, or refuse in the JSON error shape."""
        hub = self.core.realtime
        if hub is None or hub.closing:
            self._refuse(ApiError(503, "unavailable", "Live events are not available on this server now."))
            return
        token = token_from(self.request.headers.get("Authorization"), self.get_query_argument("access_token", None))
        try:
            self.principal = Authenticator.check(await self.core.auth.resolve(token), INBOX)
        except ApiError as exc:
            self._refuse(exc)
            return
        headers = self.request.headers
        if not origin_allowed(
            headers.get("Origin"),
            headers.get("Host"),
            headers.get("Sec-Fetch-Site"),
            self.core.settings.ws_allowed_origins,
        ):
            self._refuse(ApiError(403, "origin_not_allowed", "This origin may not open the inbox WebSocket."))
            return
        if headers.get("Upgrade", "").lower() != "websocket":
            # Tornado would answer a plain-text 400; the API answers in its JSON error shape.
            self.set_header("Upgrade", "websocket")
            self._refuse(ApiError(426, "upgrade_required", "GET /ws must be a WebSocket upgrade."))
            return
        await super().get(*args, **kwargs)

    def check_origin(self, origin: str) -> bool:
        # Already decided in get() (same rules, with a JSON answer).
        """Origins are checked in ``get`` before the upgrade, with the configured list."""
        return True

    def open(self, *args: Any, **kwargs: Any) -> None:
        # Small events back to back would otherwise wait on Nagle + delayed ACK (~40 ms).
        """Open the socket's session with the hub."""
        self.set_nodelay(True)
        self._last_heard = time.monotonic()
        hub = self.core.realtime
        assert hub is not None
        self.session = hub.open_session(self.principal, TornadoTransport(self))

    async def on_message(self, message: str | bytes) -> None:
        """Hand a client command to the session."""
        self._last_heard = time.monotonic()
        if self.session is not None:
            await self.session.handle_frame(message)

    def on_pong(self, data: bytes) -> None:
        """The client is alive: note when it was last heard."""
        self._last_heard = time.monotonic()

    def on_close(self) -> None:
        """The socket closed: end its session and count why."""
        if self.session is None:
            return
        # A client that stopped answering past the keep-alive window was dropped by our ping
        # timeout; anything else (a close frame, with or without a code, or a TCP close) is
        # the client leaving.
        silent = time.monotonic() - getattr(self, "_last_heard", 0.0)
        timed_out = self.close_code is None and silent >= self.core.settings.ws_ping_secs
        reason = "ping_timeout" if timed_out else "client_closed"
        self.session.transport_closed(reason)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        """Errors before the upgrade (a method other than GET) in the API's JSON error shape."""
        if status_code == 405:
            self.set_header("Allow", allowed_methods(self))
            self._refuse(ApiError(405, "method_not_allowed", "This method is not allowed here."))
            return
        self._refuse(ApiError(status_code, "bad_request" if status_code < 500 else "internal_error", self._reason))

    def _request_summary(self) -> str:
        return f"{self.request.method} {self.request.path} ({self.request.remote_ip})"

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        """Log unexpected failures only; expected 4xx answers are not errors."""
        if isinstance(value, tornado.web.HTTPError) and value.status_code < 500:
            return
        log.error("unhandled error in %s %s", self.request.method, type(self).__name__, exc_info=(typ, value, tb))


routes = [(r"/ws", WebSocketHandler)]
