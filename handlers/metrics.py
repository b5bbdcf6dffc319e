"""``GET /metrics`` in Prometheus text format, behind ``IGSYNC_METRICS_TOKEN`` when set."""

from __future__ import annotations

import hmac

from prometheus_client import CONTENT_TYPE_LATEST

from handlers.base import BaseHandler
from server.auth import bearer_token
from server.errors import unauthorized


class MetricsHandler(BaseHandler):
    def get(self) -> None:
        required = self.core.settings.metrics_token
        if required:
            given = bearer_token(self.request.headers.get("Authorization")) or ""
            if not hmac.compare_digest(given.encode(), required.encode()):
                raise unauthorized("A valid metrics bearer token is required.")
        self.set_header("Content-Type", CONTENT_TYPE_LATEST)
        self.finish(self.core.metrics.render())


routes = [(r"/metrics", MetricsHandler)]
