"""The base of every JSON handler: the core object, bearer auth, JSON in and out, errors.

Errors follow API.md §6: an :class:`~server.api.errors.ApiError` raised anywhere in a handler
or the core becomes ``{"error", "message", "fields"?}`` with its status; anything else is
logged with its traceback and answered ``500`` without details.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import orjson
import tornado.web

from server.api.auth import Principal
from server.api.errors import ApiError, bad_request

if TYPE_CHECKING:
    # Only the type: the wiring (server.app) imports handlers, never the other way round.
    from server.app.core import Core

log = logging.getLogger("igsync.http")

_REASONS = {
    400: ("bad_request", "The request is malformed."),
    401: ("unauthorized", "A valid bearer token is required."),
    403: ("forbidden", "This token may not use this endpoint."),
    404: ("not_found", "No such resource."),
    405: ("method_not_allowed", "This method is not allowed here."),
    413: ("payload_too_large", "The body is too large."),
    503: ("unavailable", "The service is unavailable; retry later."),
}


def allowed_methods(handler: tornado.web.RequestHandler) -> str:
    """The ``Allow`` header of a 405: the methods this handler implements (RFC 9110)."""
    cls = type(handler)
    methods = [
        m
        for m in cls.SUPPORTED_METHODS
        if getattr(cls, m.lower(), None) is not getattr(tornado.web.RequestHandler, m.lower())
    ]
    return ", ".join(methods)


class BaseHandler(tornado.web.RequestHandler):
    # Whether this request holds the core's request gate (entered in prepare, left once).
    _in_gate = False

    @property
    def core(self) -> Core:
        """The process's core, injected through the application settings."""
        return self.settings["igsync_core"]

    def set_default_headers(self) -> None:
        """JSON, never cached, never sniffed: every API answer."""
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.set_header("Cache-Control", "no-store")
        self.set_header("X-Content-Type-Options", "nosniff")

    def prepare(self) -> None:
        """Count the request as in flight; while the process drains, refuse it (503, retry
        elsewhere) so that the drain ends."""
        self._in_gate = self.core.gate.enter()
        if not self._in_gate:
            self.set_header("Connection", "close")
            raise ApiError(503, "shutting_down", "This server is shutting down; retry.")

    def on_finish(self) -> None:
        """The request is answered: it no longer holds the drain up."""
        if self._in_gate:
            self._in_gate = False
            self.core.gate.leave()

    def check_xsrf_cookie(self) -> None:
        # Bearer tokens, not cookies: cross-site requests cannot carry credentials.
        """No XSRF check: callers authenticate with bearer tokens, never cookies."""
        return None

    async def authorize(self, kind: str) -> Principal:
        """The caller's principal if it is of ``kind``, else 401/403."""
        return await self.core.auth.require(self.request.headers.get("Authorization"), kind)

    def json_body(self) -> Any:
        """The parsed JSON body, or 400 ``invalid_json``."""
        try:
            return orjson.loads(self.request.body or b"")
        except orjson.JSONDecodeError:
            raise bad_request("invalid_json", "The body is not valid JSON.") from None

    def write_json(self, body: Any, status: int = 200) -> None:
        """Answer ``body`` as JSON with ``status``."""
        self.set_status(status)
        self.finish(orjson.dumps(body))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        """Answer every error in the JSON error shape of API.md."""
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, ApiError):
            self.set_status(exc.status)
            body = exc.body()
        else:
            code, message = _REASONS.get(status_code, ("internal_error", "Something went wrong."))
            body = {"error": code, "message": message}
        if self.get_status() == 405:
            self.set_header("Allow", allowed_methods(self))
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.finish(orjson.dumps(body))

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        """Log unexpected failures only; expected 4xx answers are not errors."""
        if isinstance(value, ApiError):
            return  # an expected answer, not a failure
        if isinstance(value, tornado.web.HTTPError) and value.status_code < 500:
            return
        log.error("unhandled error in %s %s", self.request.method, type(self).__name__, exc_info=(typ, value, tb))

    def _handle_request_exception(self, e: BaseException) -> None:
        if isinstance(e, ApiError):
            if self._finished:
                return
            self.send_error(e.status, exc_info=(type(e), e, e.__traceback__))
            return
        super()._handle_request_exception(e)


class NotFoundHandler(BaseHandler):
    """Unknown paths answer the JSON error shape too."""

    def prepare(self) -> None:
        """Any unknown path: 404 in the JSON error shape."""
        super().prepare()
        raise ApiError(404, "not_found", "No such endpoint.")
