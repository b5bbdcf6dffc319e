"""The ``history_runs`` collection: history imports and gap repairs, each a resumable run.

A run reads one channel's conversations from Meta's Conversations API and stores what is
missing. Its document is the checkpoint (the conversations listed, the index of the next one
to read, the counts so far) and the lease that makes one process at a time work on it:
``lease_until`` is renewed after every conversation; a run whose lease ran out (its process
stopped) is taken over where its checkpoint says, by any process.

Run ids: ``backfill:<channel id>`` (one history import per channel: running it again resets
the same document) and ``repair:<channel id>:<gap id>`` (one repair per channel and gap).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from bson import ObjectId
from pymongo import ASCENDING
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from models.timeutil import utcnow

QUEUED = "queued"
RUNNING = "running"
DONE = "done"
FAILED = "failed"

BACKFILL = "backfill"
REPAIR = "repair"

COUNTS = ("calls", "conversations_done", "stored", "duplicate", "not_detailed", "invalid")


def backfill_id(channel_id: ObjectId) -> str:
    """The id of a channel's history import."""
    return f"{BACKFILL}:{channel_id}"


def repair_id(channel_id: ObjectId, gap_id: str) -> str:
    """The id of a channel's repair of one gap."""
    return f"{REPAIR}:{channel_id}:{gap_id}"


class HistoryRunRepository:
    def __init__(self, db: AsyncDatabase) -> None:
        self.coll = db["history_runs"]

    async def ensure_indexes(self) -> None:
        """Create the collection's indexes (idempotent)."""
        await self.coll.create_index([("state", ASCENDING), ("lease_until", ASCENDING)], name="state_lease")
        await self.coll.create_index([("channel_id", ASCENDING)], name="channel_id")

    @staticmethod
    def _fresh(channel_id: ObjectId, mode: str, since: dt.datetime | None, now: dt.datetime) -> dict:
        return {
            "channel_id": channel_id,
            "mode": mode,
            "since": since,
            "state": QUEUED,
            "lease_until": now,
            "owner": None,
            "listed": False,
            "list_after": None,
            "conversations": [],
            "next_index": 0,
            "counts": dict.fromkeys(COUNTS, 0),
            "queued_at": now,
            "started_at": None,
            "finished_at": None,
            "error": None,
        }

    async def queue(
        self, run_id: str, channel_id: ObjectId, mode: str, since: dt.datetime | None, *, restart: bool
    ) -> tuple[dict[str, Any], bool]:
        """Queue a run; ``(run, queued_now)``. A run that exists is left alone unless it has
        finished (done/failed) and ``restart``: then it starts over (a failed one keeps its
        checkpoint — a resumption)."""
        now = utcnow()
        try:
            doc = {"_id": run_id, **self._fresh(channel_id, mode, since, now)}
            await self.coll.insert_one(doc)
            return doc, True
        except DuplicateKeyError:
            pass
        existing = await self.coll.find_one({"_id": run_id})
        if existing is None or not restart or existing["state"] not in (DONE, FAILED):
            return existing or {}, False
        if existing["state"] == DONE or existing.get("since") != since:
            update = self._fresh(channel_id, mode, since, now)
        else:  # failed: resume from the checkpoint
            update = {"state": QUEUED, "lease_until": now, "owner": None, "error": None, "finished_at": None}
        result = await self.coll.update_one({"_id": run_id, "state": existing["state"]}, {"$set": update})
        return (await self.coll.find_one({"_id": run_id})) or {}, result.modified_count == 1

    async def claim(self, owner: str, lease_secs: float, run_id: str | None = None) -> dict[str, Any] | None:
        """Take a queued run, or a running one whose lease ran out (its process stopped)."""
        now = utcnow()
        query: dict[str, Any] = {"state": {"$in": [QUEUED, RUNNING]}, "lease_until": {"$lte": now}}
        if run_id is not None:
            query["_id"] = run_id
        # find + guarded update (the embedded store plans findAndModify as a scan).
        for candidate in await self.coll.find(query, {"_id": 1, "lease_until": 1}).limit(8).to_list(None):
            taken = await self.coll.update_one(
                {"_id": candidate["_id"], "lease_until": candidate["lease_until"], "state": {"$in": [QUEUED, RUNNING]}},
                {
                    "$set": {"state": RUNNING, "owner": owner, "lease_until": _after(now, lease_secs)},
                    "$min": {"started_at": now},
                },
            )
            if taken.modified_count == 1:
                return await self.coll.find_one({"_id": candidate["_id"]})
        return None

    async def checkpoint(self, run: dict[str, Any], fields: dict[str, Any], lease_secs: float) -> bool:
        """Save progress and renew the lease; False when the run is no longer this owner's."""
        result = await self.coll.update_one(
            {"_id": run["_id"], "owner": run["owner"], "state": RUNNING},
            {"$set": {**fields, "lease_until": _after(utcnow(), lease_secs), "updated_at": utcnow()}},
        )
        return result.matched_count == 1

    async def finish(self, run: dict[str, Any], state: str, fields: dict[str, Any]) -> bool:
        """End the run (done or failed) if it is still this owner's."""
        result = await self.coll.update_one(
            {"_id": run["_id"], "owner": run["owner"], "state": RUNNING},
            {"$set": {**fields, "state": state, "finished_at": utcnow(), "updated_at": utcnow()}},
        )
        return result.matched_count == 1

    async def release(self, run: dict[str, Any]) -> None:
        """Hand a run back (its process is stopping): queued, due now, checkpoint kept."""
        await self.coll.update_one(
            {"_id": run["_id"], "owner": run["owner"], "state": RUNNING},
            {"$set": {"state": QUEUED, "owner": None, "lease_until": utcnow(), "updated_at": utcnow()}},
        )

    async def get(self, run_id: str) -> dict[str, Any] | None:
        """A run by id."""
        return await self.coll.find_one({"_id": run_id})

    async def of_channel(self, channel_id: ObjectId) -> list[dict[str, Any]]:
        """A channel's runs, without their conversation lists."""
        return await self.coll.find({"channel_id": channel_id}, {"conversations": 0}).to_list(None)

    async def requeue_failed(self, channel_id: ObjectId, error: str) -> int:
        """Failed runs of a channel that stopped on ``error`` (a refused token): queued again."""
        runs = await self.coll.find({"channel_id": channel_id}, {"state": 1, "error": 1}).to_list(None)
        requeued = 0
        for run in runs:
            if run.get("state") == FAILED and run.get("error") == error:
                result = await self.coll.update_one(
                    {"_id": run["_id"], "state": FAILED},
                    {"$set": {"state": QUEUED, "lease_until": utcnow(), "owner": None, "error": None}},
                )
                requeued += result.modified_count
        return requeued


def _after(now: dt.datetime, secs: float) -> dt.datetime:
    return now + dt.timedelta(seconds=secs)
