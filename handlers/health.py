"""``/healthz`` (the process answers) and ``/readyz`` (its stores answer), API.md §5."""

from __future__ import annotations

from handlers.base import BaseHandler


class HealthHandler(BaseHandler):
    def get(self) -> None:
        """Liveness: the process answers."""
        self.write_json({"status": "ok"})


class ReadyHandler(BaseHandler):
    async def get(self) -> None:
        """Readiness: 200 when MongoDB and Redis both answer, else 503 with each check."""
        checks = await self.core.ready()
        ok = all(checks.values())
        self.write_json({"status": "ready" if ok else "unavailable", "checks": checks}, 200 if ok else 503)


routes = [(r"/healthz", HealthHandler), (r"/readyz", ReadyHandler)]
