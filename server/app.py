"""Builds the Tornado ``Application`` from each handlers module's ``routes``, with the core injected.

This and :mod:`server.cli` are the only core modules that import :mod:`handlers`.
"""

from __future__ import annotations

import logging
from typing import Any

import tornado.web

from handlers import api, health, inbox_page, media, metrics, triggers, webhook, ws
from handlers.base import NotFoundHandler
from server.core import Core

access_log = logging.getLogger("igsync.access")

# WebSocket clients send small commands; anything larger is abuse (API.md §4).
WS_MAX_MESSAGE_BYTES = 64 * 1024


def route_table() -> list[Any]:
    routes: list[Any] = []
    for module in (webhook, api, health, metrics, ws, media, inbox_page, triggers):
        routes.extend(module.routes)
    return routes


def log_request(handler: tornado.web.RequestHandler) -> None:
    """The access log line: method, path *without the query string* (``/ws?access_token=``
    must never be logged), status, handler class, duration. Tornado's default prints the URI."""
    request = handler.request
    status = handler.get_status()
    duration_ms = round(request.request_time() * 1000, 2)
    level = logging.INFO if status < 400 else logging.WARNING if status < 500 else logging.ERROR
    access_log.log(
        level,
        "%s %s %s %s %.2fms",
        request.method,
        request.path,
        status,
        type(handler).__name__,
        duration_ms,
        extra={
            "method": request.method,
            "path": request.path,
            "status": status,
            "handler": type(handler).__name__,
            "duration_ms": duration_ms,
        },
    )


def make_app(core: Core, **overrides: Any) -> tornado.web.Application:
    settings: dict[str, Any] = {
        "igsync_core": core,
        "default_handler_class": NotFoundHandler,
        "websocket_ping_interval": core.settings.ws_ping_secs,
        # Tornado caps the pong wait at the ping interval (and warns when asked for more).
        "websocket_ping_timeout": core.settings.ws_ping_secs,
        "websocket_max_message_size": WS_MAX_MESSAGE_BYTES,
        "xsrf_cookies": False,
        "compress_response": False,
        "log_function": log_request,
    }
    settings.update(overrides)
    return tornado.web.Application(route_table(), **settings)
