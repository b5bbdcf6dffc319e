"""The HTTP edge's one ``log_function``: request metrics and the access log line, together.

Tornado calls the application's ``log_function`` once per finished request (for a
WebSocket: when the upgrade is answered). From that one place come
``igsync_http_requests_total{handler,method,status}``,
``igsync_http_request_duration_seconds{handler}`` and one ``http_request`` log line with
status, method, path, handler class and duration.

What is logged is chosen, not scrubbed after the fact: the path *without* its query
string (``?access_token=`` and ``hub.verify_token=`` live there), never a header (bearer
tokens, ``X-Hub-Signature-256``), never a body. Probes and scrapes (``/healthz``,
``/readyz``, ``/metrics``) that succeed are logged at DEBUG: every 10 s from every
load balancer and Prometheus would otherwise bury the lines that matter.

:mod:`server.app.routes` installs it; this module never imports a handler.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

import tornado.web
import tornado.websocket

from server.ops.metrics import HTTP_METHODS, Metrics, bounded, status_class

log = logging.getLogger("igsync.access")

QUIET_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
# A path is client input: long ones are cut so one request cannot flood a log line.
MAX_LOGGED_PATH_CHARS = 200


def handler_methods(handler_class: type) -> list[str]:
    """The HTTP methods a handler class implements (beyond Tornado's default 405s)."""
    methods = []
    for method in handler_class.SUPPORTED_METHODS:
        implementation = getattr(handler_class, method.lower(), None)
        if implementation is not None and implementation is not getattr(tornado.web.RequestHandler, method.lower()):
            methods.append(method)
    return methods


def http_series(handler_classes: Iterable[type]) -> list[tuple[str, list[str], list[str]]]:
    """The (handler, methods, status classes) to pre-create for these handler classes."""
    series = []
    for cls in dict.fromkeys(handler_classes):
        statuses = ["2xx", "4xx", "5xx"]
        if issubclass(cls, tornado.websocket.WebSocketHandler):
            statuses.insert(0, "1xx")
        series.append((cls.__name__, handler_methods(cls) or ["GET"], statuses))
    return series


def make_log_function(metrics: Metrics) -> Callable[[Any], None]:
    """The ``log_function`` application setting: ``fn(handler)`` after each request."""

    def log_request(handler: Any) -> None:
        request = handler.request
        status = handler.get_status()
        duration = request.request_time()
        name = type(handler).__name__
        method = bounded(request.method or "", HTTP_METHODS)
        metrics.http_requests.labels(handler=name, method=method, status=status_class(status)).inc()
        metrics.http_duration.labels(handler=name).observe(duration)
        path = request.path
        if len(path) > MAX_LOGGED_PATH_CHARS:
            path = path[:MAX_LOGGED_PATH_CHARS] + "…"
        if status >= 500:
            level = logging.ERROR
        elif status >= 400:
            level = logging.WARNING
        elif request.path in QUIET_PATHS:
            level = logging.DEBUG
        else:
            level = logging.INFO
        duration_ms = round(duration * 1000, 3)
        log.log(
            level,
            "%s %s %s %s %.2fms",
            method,
            path,
            status,
            name,
            duration_ms,
            extra={
                "event": "http_request",
                "status": status,
                "method": method,
                "path": path,
                "handler": name,
                "duration_ms": duration_ms,
                "remote_ip": request.remote_ip,
            },
        )

    return log_request
