"""``POST /api/v1/messages/mark-sent`` (API.md §2). :mod:`server.dedup.marksent` does the work."""

from __future__ import annotations

from handlers.base import BaseHandler


class MarkSentHandler(BaseHandler):
    async def post(self) -> None:
        """Record a reply sent outside igsync, so its echo is not stored twice."""
        result = await self.core.marksent.handle(self.request.headers.get("Authorization"), self.request.body)
        self.write_json(result.body, result.status)


routes = [(r"/api/v1/messages/mark-sent", MarkSentHandler)]
