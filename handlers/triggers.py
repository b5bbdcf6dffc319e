"""``GET /api/v1/triggers/dead`` (API.md §3b, admin): dead-lettered trigger deliveries, newest first."""

from __future__ import annotations

from handlers.base import BaseHandler
from server.api.auth import ADMIN


class DeadTriggersHandler(BaseHandler):
    async def get(self) -> None:
        """List dead-lettered trigger deliveries, newest first; admin only."""
        await self.authorize(ADMIN)
        self.write_json(
            await self.core.triggers.list_dead(
                limit=self.get_query_argument("limit", None),
                cursor=self.get_query_argument("cursor", None),
                channel_id=self.get_query_argument("channel_id", None),
            )
        )


routes = [(r"/api/v1/triggers/dead", DeadTriggersHandler)]
