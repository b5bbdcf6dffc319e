"""The ``media_jobs`` collection: the durable queue of attachments to download.

One job per (message, attachment key) — a unique index, so the after-store hook can run
again on a redelivery without queueing twice. Workers in any process *claim* a job
atomically (an indexed read of a candidate, then one ``update_one`` guarded by the state
and owner it was read with) and hold it by a lease; a worker that dies leaves the lease
to expire and another one takes the job over. Every later write of a worker is guarded by
its lease (``lease_owner`` + ``state: running``), so a worker that lost its job (lease
expired, or the message was unsent and the job cancelled) cannot overwrite the outcome.

States: ``pending`` → ``running`` → ``completed`` | ``failed`` | back to ``pending``
(retry, with ``next_attempt_at``) | ``cancelled`` (the message was unsent).
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

from bson import ObjectId
from pymongo import ASCENDING, DESCENDING
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError

from models.timeutil import utcnow

PENDING = "pending"
RUNNING = "running"
COMPLETED = "completed"
FAILED = "failed"
CANCELLED = "cancelled"
DUPLICATE_KEY = 11000
# Candidates a worker tries when other workers keep winning the one it read.
CLAIM_TRIES = 5


class MediaJobRepository:
    def __init__(self, db: AsyncDatabase) -> None:
        self.coll = db["media_jobs"]

    async def ensure_indexes(self) -> None:
        """Create the collection's indexes (idempotent)."""
        await self.coll.create_index(
            [("message_id", ASCENDING), ("key", ASCENDING)], unique=True, name="message_key_unique"
        )
        await self.coll.create_index([("state", ASCENDING), ("next_attempt_at", ASCENDING)], name="state_due")
        await self.coll.create_index([("state", ASCENDING), ("lease_until", ASCENDING)], name="state_lease")
        # The lease-guarded writes filter on exactly these fields: SecantusDB plans an index
        # only when it covers every predicate (``_id`` alone would not do).
        await self.coll.create_index(
            [("_id", ASCENDING), ("state", ASCENDING), ("lease_owner", ASCENDING)], name="id_state_owner"
        )

    async def enqueue(self, jobs: list[dict[str, Any]]) -> int:
        """Insert the jobs that do not exist yet; how many were new."""
        if not jobs:
            return 0
        now = utcnow()
        docs = [
            {
                "_id": ObjectId(),
                **job,
                "state": PENDING,
                "attempts": 0,
                "next_attempt_at": now,
                "lease_until": None,
                "lease_owner": None,
                "file_id": None,
                "error": None,
                "created_at": now,
                "updated_at": now,
            }
            for job in jobs
        ]
        try:
            result = await self.coll.insert_many(docs, ordered=False)
            return len(result.inserted_ids)
        except BulkWriteError as exc:
            errors = exc.details.get("writeErrors", [])
            if any(e.get("code") != DUPLICATE_KEY for e in errors):
                raise
            return len(docs) - len(errors)

    async def claim(self, owner: str, lease_secs: float, now: dt.datetime | None = None) -> dict[str, Any] | None:
        """Take the most overdue due job, else a running one whose lease expired (its worker
        died); None when there is nothing to do.

        Optimistic: read a candidate on its index, then take it with an ``update_one``
        guarded by the state and owner it was read with — two workers reading the same
        candidate cannot both win. (SecantusDB's ``findAndModify`` scans the collection,
        so the one-call ``find_one_and_update`` is avoided here, as is an ``$or``.)"""
        now = now or utcnow()
        lease_until = now + dt.timedelta(seconds=lease_secs)
        for query, order in (
            ({"state": PENDING, "next_attempt_at": {"$lte": now}}, "next_attempt_at"),
            ({"state": RUNNING, "lease_until": {"$lt": now}}, "lease_until"),
        ):
            for _ in range(CLAIM_TRIES):
                candidate = await self.coll.find_one(query, sort=[(order, ASCENDING)])
                if candidate is None:
                    break
                # The guard names the attempt too: state and owner alone come back (a job given
                # back by ``retry`` is PENDING with no owner again), so a worker holding a stale
                # read could take the next attempt as its own and the job would run twice at once.
                taken = await self.coll.update_one(
                    {
                        "_id": candidate["_id"],
                        "state": candidate["state"],
                        "lease_owner": candidate["lease_owner"],
                        "attempts": candidate["attempts"],
                    },
                    {
                        "$set": {"state": RUNNING, "lease_owner": owner, "lease_until": lease_until, "updated_at": now},
                        "$inc": {"attempts": 1},
                    },
                )
                if taken.modified_count == 1:
                    return {
                        **candidate,
                        "state": RUNNING,
                        "lease_owner": owner,
                        "lease_until": lease_until,
                        "updated_at": now,
                        "attempts": candidate["attempts"] + 1,
                    }
        return None

    def _held(self, job: dict[str, Any]) -> dict[str, Any]:
        return {"_id": job["_id"], "state": RUNNING, "lease_owner": job["lease_owner"]}

    async def attach_file(self, job: dict[str, Any], file_id: ObjectId) -> bool:
        """Remember the stored copy, so a retry after a crash does not download again."""
        result = await self.coll.update_one(self._held(job), {"$set": {"file_id": file_id, "updated_at": utcnow()}})
        return result.modified_count == 1

    async def refresh_url(self, job: dict[str, Any], url: str) -> bool:
        """Download from a fresh link (the job's expired): kept, so a retry after a crash uses
        it too, with the expired one beside it; ``url_refreshed_at`` allows one refresh only."""
        now = utcnow()
        result = await self.coll.update_one(
            self._held(job),
            {"$set": {"url": url, "expired_url": job["url"], "url_refreshed_at": now, "updated_at": now}},
        )
        return result.modified_count == 1

    async def finish(self, job: dict[str, Any], state: str, error: str | None = None) -> bool:
        """End a job this worker holds as ``state``; whether the lease was still ours."""
        result = await self.coll.update_one(
            self._held(job),
            {"$set": {"state": state, "error": error, "lease_until": None, "updated_at": utcnow()}},
        )
        return result.modified_count == 1

    async def retry(self, job: dict[str, Any], at: dt.datetime, error: str) -> bool:
        """Give a held job back for another try at ``at``; whether the lease was still ours."""
        result = await self.coll.update_one(
            self._held(job),
            {
                "$set": {
                    "state": PENDING,
                    "next_attempt_at": at,
                    "error": error,
                    # Kept after a later success: why the job needed more than one try.
                    "last_retry_error": error,
                    "lease_until": None,
                    "lease_owner": None,
                    "updated_at": utcnow(),
                }
            },
        )
        return result.modified_count == 1

    async def failed_page(self, *, limit: int, reason_prefix: str | None = None) -> list[dict[str, Any]]:
        """Failed jobs, most recently failed first (an operator's list: it may read every
        failed job on the embedded store, which sorts in Python)."""
        query = self._failed(None, reason_prefix)
        return await self.coll.find(query).sort("updated_at", DESCENDING).limit(limit).to_list(None)

    async def requeue_failed(
        self, job_ids: list[ObjectId] | None, *, reason_prefix: str | None = None, channel_id: ObjectId | None = None
    ) -> int:
        """Failed jobs (these, or all) pending again, due now, with fresh attempts and the
        right to one more fresh link; how many. Only ``failed`` ones: a job that completed
        or was cancelled (its message unsent) meanwhile stays as it is."""
        now = utcnow()
        query = self._failed(job_ids, reason_prefix)
        if channel_id is not None:
            query["channel_id"] = channel_id
        result = await self.coll.update_many(
            query,
            {
                "$set": {
                    "state": PENDING,
                    "attempts": 0,
                    "next_attempt_at": now,
                    "error": None,
                    "lease_until": None,
                    "lease_owner": None,
                    "updated_at": now,
                },
                "$unset": {"url_refreshed_at": ""},
            },
        )
        return result.modified_count

    @staticmethod
    def _failed(job_ids: list[ObjectId] | None, reason_prefix: str | None) -> dict[str, Any]:
        query: dict[str, Any] = {"state": FAILED}
        if job_ids is not None:
            query["_id"] = {"$in": job_ids}
        if reason_prefix:
            query["error"] = {"$regex": f"^{re.escape(reason_prefix)}"}
        return query

    async def cancel_for_message(self, message_id: ObjectId) -> list[ObjectId]:
        """Cancel every job of an unsent message; the ids of the copies stored so far.

        Cancelling first and reading the file ids after closes the race with a worker: a
        worker attaches a file only while its job is still running."""
        await self.coll.update_many(
            {"message_id": message_id},
            {"$set": {"state": CANCELLED, "lease_until": None, "updated_at": utcnow()}},
        )
        rows = await self.coll.find({"message_id": message_id}, {"file_id": 1}).to_list(None)
        return [r["file_id"] for r in rows if r.get("file_id") is not None]

    async def for_message(self, message_id: ObjectId) -> list[dict[str, Any]]:
        """Every download job of a message, by target key."""
        return await self.coll.find({"message_id": message_id}).sort("key", ASCENDING).to_list(None)

    async def get(self, job_id: ObjectId) -> dict[str, Any] | None:
        """A download job by id."""
        return await self.coll.find_one({"_id": job_id})
