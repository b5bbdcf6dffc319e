"""Builds the Tornado ``Application`` from each handlers module's ``routes``, with the core injected.

This and :mod:`server.cli` are the only core modules that import :mod:`handlers`.
"""

from __future__ import annotations

from typing import Any

import tornado.web

from handlers import api, health, metrics, triggers, webhook
from handlers.base import NotFoundHandler
from server.core import Core

# WebSocket clients send small commands; anything larger is abuse (API.md §4).
WS_MAX_MESSAGE_BYTES = 64 * 1024


def route_table() -> list[Any]:
    routes: list[Any] = []
    for module in (webhook, api, health, metrics, triggers):
        routes.extend(module.routes)
    return routes


def make_app(core: Core, **overrides: Any) -> tornado.web.Application:
    settings: dict[str, Any] = {
        "igsync_core": core,
        "default_handler_class": NotFoundHandler,
        "websocket_ping_interval": core.settings.ws_ping_secs,
        "websocket_ping_timeout": core.settings.ws_ping_secs * 2,
        "websocket_max_message_size": WS_MAX_MESSAGE_BYTES,
        "xsrf_cookies": False,
        "compress_response": False,
    }
    settings.update(overrides)
    return tornado.web.Application(route_table(), **settings)
