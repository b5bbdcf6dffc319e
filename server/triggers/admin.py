"""Deliveries that failed for good: dead letters and requeues.

:class:`TriggerAdmin` serves ``GET /api/v1/triggers/dead`` and ``igsync triggers
list-dead|retry``; a requeued job wakes the dispatcher (``on_requeued``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bson import ObjectId

from models.ids import Picked, pick_in_state
from models.store import Store
from models.timeutil import iso
from models.trigger_jobs import STATE_DEAD
from server.api.errors import not_found
from server.api.pagination import decode_cursor, encode_cursor, parse_limit


def dead_delivery(job: dict[str, Any]) -> dict[str, Any]:
    """A dead-lettered job as the API and the CLI show it."""
    error = job.get("last_error") or {}
    return {
        "delivery_id": str(job["_id"]),
        "target": job["target"],
        "channel_id": str(job["channel_id"]),
        "conversation_id": str(job["conversation_id"]),
        "message_id": str(job["message_id"]),
        "attempts": int(job.get("attempts") or 0),
        "retries": int(job.get("retries") or 0),
        "last_error": {
            "result": error.get("result"),
            "status": error.get("status"),
            "detail": error.get("detail"),
            "at": iso(error.get("at")),
        },
        "created_at": iso(job.get("created_at")),
        "dead_at": iso(job.get("dead_at")),
    }


class TriggerAdmin:
    """Dead letters: list them (admin API, CLI) and put them back in their lane (CLI)."""

    def __init__(self, store: Store, *, on_requeued: Callable[[], None] | None = None) -> None:
        self.store = store
        self.on_requeued = on_requeued

    async def _channel_filter(self, channel_id: str | None) -> ObjectId | None:
        if not channel_id:
            return None
        channel = await self.store.channels.get(channel_id)
        if channel is None:
            raise not_found("channel")
        return channel["_id"]

    async def list_dead(
        self, *, limit: str | None = None, cursor: str | None = None, channel_id: str | None = None
    ) -> dict[str, Any]:
        """One page of dead-lettered deliveries, newest first."""
        page_size = parse_limit(limit)
        channel_oid = await self._channel_filter(channel_id)
        before = decode_cursor(cursor) if cursor else None
        jobs = await self.store.trigger_jobs.dead_page(limit=page_size + 1, channel_id=channel_oid, before=before)
        next_cursor = None
        if len(jobs) > page_size:
            jobs = jobs[:page_size]
            next_cursor = encode_cursor(jobs[-1]["dead_at"], jobs[-1]["_id"])
        return {"deliveries": [dead_delivery(j) for j in jobs], "next_cursor": next_cursor}

    async def retry(self, delivery_ids: list[str] | None, *, channel_id: str | None = None) -> dict[str, Any]:
        """Requeue the named dead jobs (or, with ``None``, every dead job of the channel or of
        all channels): pending again, due now, with a fresh set of attempts."""
        channel_oid = await self._channel_filter(channel_id)
        picked = Picked()
        oids: list[ObjectId] | None = None
        if delivery_ids is not None:
            picked = await pick_in_state(
                delivery_ids,
                self.store.trigger_jobs.get,
                STATE_DEAD,
                visible=lambda job: channel_oid is None or job["channel_id"] == channel_oid,
            )
            oids = picked.ready
        retried = await self.store.trigger_jobs.requeue_dead(oids, channel_id=channel_oid) if oids != [] else 0
        if retried and self.on_requeued is not None:
            self.on_requeued()
        not_dead = [{"delivery_id": raw, "state": state} for raw, state in picked.other_state]
        return {"retried": retried, "not_found": picked.not_found, "not_dead": not_dead}
