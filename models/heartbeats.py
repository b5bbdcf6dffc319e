"""When igsync was last up, and the gaps it was not: the ``heartbeats`` and ``gaps`` collections.

Every process records ``at`` on one shared document every few seconds. A write that finds the
previous beat older than Meta's redelivery window means nothing was taking webhooks (igsync
down, or its store down: a beat cannot be written then either) for longer than Meta retries:
messages of that time may be missing for good. That interval is recorded as a *gap* — once,
however many processes notice it, because its id is the time it started. A channel back from
``needs_reauth`` records a gap of its own (``channel_id`` set).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from bson import ObjectId
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from models.timeutil import utcnow

HEARTBEAT_ID = "igsync"


class HeartbeatRepository:
    def __init__(self, db: AsyncDatabase) -> None:
        self.coll = db["heartbeats"]
        self.gaps = db["gaps"]

    async def ensure_indexes(self) -> None:
        """Nothing beyond ``_id``: one beat document; gaps are read by id or all at once."""

    async def beat(self, now: dt.datetime) -> dt.datetime | None:
        """Record that a process is up at ``now``; the previous beat (None: the first ever)."""
        previous = await self.coll.find_one({"_id": HEARTBEAT_ID})
        await self.coll.update_one({"_id": HEARTBEAT_ID}, {"$max": {"at": now}}, upsert=True)
        return None if previous is None else previous.get("at")

    async def record_gap(
        self, start: dt.datetime, end: dt.datetime, reason: str, channel_id: ObjectId | None = None
    ) -> dict[str, Any] | None:
        """Record a gap; the gap if this call recorded it, None if another process did."""
        scope = str(channel_id) if channel_id is not None else "all"
        gap = {
            "_id": f"{scope}:{start.strftime('%Y%m%dT%H%M%S.%f')}",
            "channel_id": channel_id,
            "start": start,
            "end": end,
            "reason": reason,
            "recorded_at": utcnow(),
        }
        try:
            await self.gaps.insert_one(gap)
        except DuplicateKeyError:
            return None
        return gap

    async def list_gaps(self) -> list[dict[str, Any]]:
        """Every recorded gap, oldest first."""
        return await self.gaps.find({}).sort("start", 1).to_list(None)
