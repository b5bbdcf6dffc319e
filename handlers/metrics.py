"""``GET /metrics`` in Prometheus text format, behind ``IGSYNC_METRICS_TOKEN`` when set.

With a token configured, API.md §6 applies as everywhere: no or a wrong token is 401, a
valid token of another kind (admin, internal, inbox) is 403.
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST

from handlers.base import BaseHandler
from server.api.auth import METRICS


class MetricsHandler(BaseHandler):
    async def get(self) -> None:
        """The Prometheus exposition (behind the metrics token when one is set)."""
        if self.core.settings.metrics_token:
            await self.authorize(METRICS)
        self.set_header("Content-Type", CONTENT_TYPE_LATEST)
        self.finish(self.core.metrics.render())


routes = [(r"/metrics", MetricsHandler)]
