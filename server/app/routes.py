"""Builds the Tornado ``Application`` from each handlers module's ``routes``, with the core injected.

This and :mod:`server.app.cli` are the only core modules that import :mod:`handlers`.
"""

from __future__ import annotations

from typing import Any

import tornado.routing
import tornado.web

from handlers import api, health, inbox_page, marksent, media, metrics, openapi, triggers, webhook, ws
from handlers.base import NotFoundHandler
from server.app.core import Core
from server.ops.access_log import http_series, make_log_function

# WebSocket clients send small commands; anything larger is abuse (API.md §4).
WS_MAX_MESSAGE_BYTES = 64 * 1024


def route_table() -> list[Any]:
    """Every route of the application, from each handler module's ``routes``."""
    routes: list[Any] = []
    for module in (webhook, api, marksent, health, metrics, openapi, ws, media, inbox_page, triggers):
        routes.extend(module.routes)
    return routes


def handler_classes(routes: list[Any]) -> list[type]:
    """The handler class of every route (tuples or ``URLSpec``s), plus the 404 handler."""
    classes: list[type] = []
    for route in routes:
        cls = route.target if isinstance(route, tornado.routing.Rule) else route[1]
        if isinstance(cls, type):
            classes.append(cls)
    return [*classes, NotFoundHandler]


def make_app(core: Core, **overrides: Any) -> tornado.web.Application:
    """The Tornado application serving ``core``."""
    routes = route_table()
    # Request metrics and the access log come from one log_function (server.access_log);
    # every handler's series exist at 0 before its first request.
    core.metrics.register_handlers(http_series(handler_classes(routes)))
    settings: dict[str, Any] = {
        "igsync_core": core,
        "log_function": make_log_function(core.metrics),
        "default_handler_class": NotFoundHandler,
        "websocket_ping_interval": core.settings.ws_ping_secs,
        # Tornado caps the pong wait at the ping interval (and warns when asked for more).
        "websocket_ping_timeout": core.settings.ws_ping_secs,
        "websocket_max_message_size": WS_MAX_MESSAGE_BYTES,
        "xsrf_cookies": False,
        "compress_response": False,
    }
    settings.update(overrides)
    return tornado.web.Application(routes, **settings)
