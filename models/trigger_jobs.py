"""The trigger outbox: the marks on messages, ``trigger_jobs`` (one job per customer message
and target) and ``trigger_lanes`` (the lease that makes one process at a time deliver a
conversation's jobs).

Marks
    A customer message of a channel with triggers is inserted with ``trigger_pending: true``
    and ``trigger_targets`` — the outbox entry is part of the message's own write. The
    dispatcher *materializes* marked messages into jobs (an idempotent ``insert_many``) and
    then clears the marks; a crash in between only repeats the insert, which the unique
    index turns into a no-op.

Jobs
    ``{_id, lane, target, message_id, conversation_id, channel_id, state, order_at, due_at,
    attempts, created_at, last_error, delivered_at | dead_at | cancelled_at}``. ``_id`` is
    the ``delivery_id`` receivers deduplicate on. The unique index ``(message_id, target)``
    makes materializing idempotent: inserting a job again gets ``DuplicateKeyError``, which
    means "already recorded".
    ``state`` is ``pending`` until it ends ``delivered``, ``dead`` or ``cancelled``.

Lanes
    A lane is one conversation's jobs for one target (``"<conversation_id>:<target>"``); its
    jobs are delivered one at a time in ``(order_at, _id)`` order. The lane lock is a
    document with the lane as ``_id``: inserting it takes the lock (the unique ``_id`` decides
    between processes), a conditional update steals it once its lease has run out (the
    holder died), deleting it releases it. No upsert is involved, so SecantusDB's answer of
    ``None`` to racing upserts cannot hand the lock to two processes.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from bson import ObjectId
from pymongo import ASCENDING, DESCENDING
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError, DuplicateKeyError

from models.expiry import TtlIndexes
from models.group_commit import GroupInserter
from models.timeutil import utcnow

STATE_PENDING = "pending"
STATE_DELIVERED = "delivered"
STATE_DEAD = "dead"
STATE_CANCELLED = "cancelled"

TARGET_HTTP = "http"
TARGET_REDIS_STREAM = "redis_stream"
TARGETS = (TARGET_HTTP, TARGET_REDIS_STREAM)

_JOB_KEY = {"message_id": 1, "target": 1}
# Dead letters that died in the same millisecond as a page's last row, read past per page.
_TIE_SLACK = 20
# A lock document nobody released (its process was killed) is stolen once its lease has run
# out; the TTL only tidies locks of lanes that never get work again.
_LANE_LOCK_TTL_SECS = 86400


def lane_of(conversation_id: ObjectId, target: str) -> str:
    """The lane of a (conversation, target): deliveries in one lane go in order."""
    return f"{conversation_id}:{target}"


def mark_for_triggers(message: dict[str, Any], targets: list[str]) -> None:
    """Put the outbox mark on a message document about to be inserted."""
    message["trigger_pending"] = True
    message["trigger_targets"] = list(targets)


def _only_job_duplicates(errors: list[dict[str, Any]]) -> bool:
    return all(e.get("code") == 11000 and e.get("keyPattern") == _JOB_KEY for e in errors)


class TriggerJobRepository:
    def __init__(self, db: AsyncDatabase, *, delivered_ttl_days: int = 7, ttl: TtlIndexes | None = None) -> None:
        self.messages = db["messages"]
        self.coll = db["trigger_jobs"]
        self.delivered_ttl_secs = delivered_ttl_days * 86400
        self._ttl = ttl or TtlIndexes()
        self._expiry = self._ttl.declare(
            "trigger_jobs", "finished_at", self.delivered_ttl_secs, {"finished_at": {"$exists": True}}
        )

    async def ensure_indexes(self) -> None:
        # Marked messages: few at any time (the dispatcher clears them within a poll), so a
        # partial index on the flag stays tiny however many messages there are.
        """Create the outbox's indexes (idempotent)."""
        await self.messages.create_index(
            [("trigger_pending", ASCENDING)], name="trigger_pending", partialFilterExpression={"trigger_pending": True}
        )
        # Sparse: only jobs carry both fields (a hand-made document without them is no duplicate).
        await self.coll.create_index(
            [("message_id", ASCENDING), ("target", ASCENDING)], unique=True, sparse=True, name="message_target_unique"
        )
        # Every query of the dispatcher is about pending jobs, the admin's about dead ones:
        # partial indexes hold only those, so they stay small however much history is kept.
        pending = {"state": STATE_PENDING}
        # The poll: due pending jobs, most overdue first.
        await self.coll.create_index([("due_at", ASCENDING)], name="pending_due", partialFilterExpression=pending)
        # A lane's head: its first pending job in order.
        await self.coll.create_index(
            [("lane", ASCENDING), ("order_at", ASCENDING), ("_id", ASCENDING)],
            name="pending_lane_order",
            partialFilterExpression=pending,
        )
        # The oldest undelivered job (lag gauge).
        await self.coll.create_index(
            [("created_at", ASCENDING)], name="pending_created", partialFilterExpression=pending
        )
        # Dead letters, newest first, for the admin API.
        await self.coll.create_index(
            [("dead_at", DESCENDING), ("_id", DESCENDING)],
            name="dead_newest",
            partialFilterExpression={"state": STATE_DEAD},
        )
        # Delivered and cancelled jobs are history only, kept for a while; pending and dead
        # ones never carry ``finished_at`` and so never expire.
        await self._ttl.ensure(self.coll, self._expiry, name="finished_at_ttl")

    # -- materializing marks into jobs (the dispatcher, off the hot path) --------------

    async def materialize(self, *, limit: int) -> int:
        """Turn up to ``limit`` marked messages into pending jobs, then clear their marks.

        Returns how many messages were taken. Jobs that already exist (a crash between the
        insert and the clearing) are skipped by the unique index; any other failure leaves
        the marks for the next poll.
        """
        fields = {"conversation_id": 1, "channel_id": 1, "sent_at": 1, "created_at": 1, "trigger_targets": 1}
        marked = await self.messages.find({"trigger_pending": True}, fields).limit(limit).to_list(None)
        if not marked:
            return 0
        now = utcnow()
        docs = [
            {
                "_id": ObjectId(),
                "lane": lane_of(m["conversation_id"], target),
                "target": target,
                "message_id": m["_id"],
                "conversation_id": m["conversation_id"],
                "channel_id": m["channel_id"],
                "state": STATE_PENDING,
                "order_at": m.get("sent_at") or now,
                "due_at": now,
                "attempts": 0,
                # The message's time: lag and delivery latency count from when it was stored.
                "created_at": m.get("created_at") or now,
                "last_error": None,
            }
            for m in marked
            for target in m.get("trigger_targets") or []
        ]
        if docs:
            try:
                await self.coll.insert_many(docs, ordered=False)
            except BulkWriteError as exc:
                errors = exc.details.get("writeErrors", [])
                if exc.details.get("writeConcernErrors") or not _only_job_duplicates(errors):
                    raise
        # Names the channels too: on a sharded cluster the clearing goes only to their shards.
        channels = list({m["channel_id"] for m in marked})
        await self.messages.update_many(
            {"channel_id": {"$in": channels}, "_id": {"$in": [m["_id"] for m in marked]}},
            {"$unset": {"trigger_pending": "", "trigger_targets": ""}},
        )
        return len(marked)

    async def count_marked(self) -> int:
        """How many messages still carry an unprocessed trigger mark."""
        return await self.messages.count_documents({"trigger_pending": True})

    async def oldest_marked_created_at(self) -> dt.datetime | None:
        """About the oldest mark not materialized yet (the first few in the flag's index —
        a sort on another field would make the embedded server scan all messages)."""
        docs = await self.messages.find({"trigger_pending": True}, {"created_at": 1}).limit(50).to_list(None)
        times = [d["created_at"] for d in docs if d.get("created_at") is not None]
        return min(times) if times else None

    # -- the dispatcher -----------------------------------------------------------------

    async def due_lanes(self, now: dt.datetime, *, exclude: list[str], limit: int) -> list[str]:
        """Lanes with a due pending job, most overdue first, leaving out ``exclude`` (lanes busy
        here or elsewhere). The exclusion is applied here, not in the query: a predicate on a
        field outside the index makes the embedded server scan the whole collection."""
        skip = set(exclude)
        query = {"state": STATE_PENDING, "due_at": {"$lte": now}}
        rows = await self.coll.find(query, {"lane": 1}).sort("due_at", ASCENDING).limit(limit + len(skip)).to_list(None)
        lanes: list[str] = []
        for row in rows:
            if row["lane"] not in skip and row["lane"] not in lanes:
                lanes.append(row["lane"])
        return lanes

    async def heads(self, lanes: list[str], *, per_lane: int) -> dict[str, list[dict[str, Any]]]:
        """Each lane's next jobs to deliver — its first ``per_lane`` pending ones, in order.

        One query for all lanes (their jobs are adjacent in the index); a lane whose rows the
        overall limit may have cut off (a long backlog in a lane before it) is read alone.
        """
        order = [("lane", ASCENDING), ("order_at", ASCENDING), ("_id", ASCENDING)]
        limit = per_lane * len(lanes)
        rows = (
            await self.coll.find({"lane": {"$in": lanes}, "state": STATE_PENDING})
            .sort(order)
            .limit(limit)
            .to_list(None)
        )
        heads: dict[str, list[dict[str, Any]]] = {lane: [] for lane in lanes}
        for row in rows:
            if len(heads[row["lane"]]) < per_lane:
                heads[row["lane"]].append(row)
        if len(rows) == limit:
            last = rows[-1]["lane"]
            for lane in lanes:
                if lane >= last and len(heads[lane]) < per_lane:
                    heads[lane] = (
                        await self.coll.find({"lane": lane, "state": STATE_PENDING})
                        .sort(order[1:])
                        .limit(per_lane)
                        .to_list(None)
                    )
        return heads

    async def hold_back(self, lane: str, until: dt.datetime) -> None:
        """Jobs queued behind a head that waits for a retry are not due before it: keeps the
        poll from returning, again and again, lanes that cannot move."""
        await self.coll.update_many(
            {"lane": lane, "state": STATE_PENDING, "due_at": {"$lt": until}}, {"$set": {"due_at": until}}
        )

    async def delivered(self, job_ids: list[ObjectId]) -> None:
        """Jobs acknowledged by their receivers (each after one more attempt)."""
        now = utcnow()
        await self.coll.update_many(
            {"_id": {"$in": job_ids}},
            {
                "$set": {"state": STATE_DELIVERED, "delivered_at": now, "finished_at": now, "last_attempt_at": now},
                "$inc": {"attempts": 1},
            },
        )

    async def retry_later(self, job_id: ObjectId, attempts: int, due_at: dt.datetime, error: dict[str, Any]) -> None:
        """Schedule another attempt of a job at ``due_at``."""
        await self.coll.update_one(
            {"_id": job_id},
            {"$set": {"attempts": attempts, "due_at": due_at, "last_error": error, "last_attempt_at": utcnow()}},
        )

    async def dead(self, job_id: ObjectId, attempts: int, error: dict[str, Any]) -> None:
        """Dead-letter a job after its last attempt."""
        now = utcnow()
        await self.coll.update_one(
            {"_id": job_id},
            {
                "$set": {
                    "state": STATE_DEAD,
                    "attempts": attempts,
                    "dead_at": now,
                    "last_error": error,
                    "last_attempt_at": now,
                }
            },
        )

    async def cancelled(self, job_id: ObjectId, reason: str) -> None:
        """Cancel a job that should not be delivered (its target is gone)."""
        now = utcnow()
        await self.coll.update_one(
            {"_id": job_id},
            {"$set": {"state": STATE_CANCELLED, "cancelled_at": now, "finished_at": now, "cancel_reason": reason}},
        )

    # -- gauges -------------------------------------------------------------------------

    async def oldest_pending_created_at(self) -> dt.datetime | None:
        """When the oldest pending job was created, or None."""
        doc = await self.coll.find_one({"state": STATE_PENDING}, {"created_at": 1}, sort=[("created_at", ASCENDING)])
        return None if doc is None else doc["created_at"]

    async def count(self, state: str) -> int:
        """How many jobs are in ``state``."""
        return await self.coll.count_documents({"state": state})

    # -- admin --------------------------------------------------------------------------

    async def get(self, job_id: ObjectId) -> dict[str, Any] | None:
        """A job by id."""
        return await self.coll.find_one({"_id": job_id})

    async def dead_page(
        self,
        *,
        limit: int,
        channel_id: ObjectId | None = None,
        before: tuple[dt.datetime, ObjectId] | None = None,
    ) -> list[dict[str, Any]]:
        """Dead-lettered jobs, most recently dead first; ``before`` is the (dead_at, _id) last seen.

        The query is one plain range on ``dead_at`` (a top-level ``$or`` for the tie-break, or
        a channel predicate outside the index, makes the embedded server scan every job); the
        channel and the rows tied with the cursor that were already seen are sorted out here,
        reading further while a batch held too few.
        """
        query: dict[str, Any] = {"state": STATE_DEAD}
        if before is not None:
            query["dead_at"] = {"$lte": before[0]}
        fetch = limit + _TIE_SLACK
        while True:
            cursor = self.coll.find(query).sort([("dead_at", DESCENDING), ("_id", DESCENDING)]).limit(fetch)
            raw = await cursor.to_list(None)
            rows = [
                r
                for r in raw
                if (channel_id is None or r["channel_id"] == channel_id)
                and (before is None or r["dead_at"] < before[0] or r["_id"] < before[1])
            ]
            if len(rows) >= limit or len(raw) < fetch:
                return rows[:limit]
            fetch *= 2

    async def requeue_dead(self, job_ids: list[ObjectId] | None, *, channel_id: ObjectId | None = None) -> int:
        """Dead jobs (these, or all of them) back to pending with a fresh set of attempts."""
        query: dict[str, Any] = {"state": STATE_DEAD}
        if job_ids is not None:
            query["_id"] = {"$in": job_ids}
        if channel_id is not None:
            query["channel_id"] = channel_id
        now = utcnow()
        result = await self.coll.update_many(
            query,
            {
                "$set": {"state": STATE_PENDING, "attempts": 0, "due_at": now, "retried_at": now},
                "$unset": {"dead_at": ""},
                "$inc": {"retries": 1},
            },
        )
        return result.modified_count


class TriggerLaneRepository:
    """``trigger_lanes``: one lock document per lane being delivered (see the module docstring)."""

    def __init__(self, db: AsyncDatabase, *, ttl: TtlIndexes | None = None) -> None:
        self.coll = db["trigger_lanes"]
        self._ttl = ttl or TtlIndexes()
        self._expiry = self._ttl.declare("trigger_lanes", "lease_until", _LANE_LOCK_TTL_SECS)
        # Lanes starting together take their locks in one insert_many.
        self._inserter = GroupInserter(self.coll)

    async def ensure_indexes(self) -> None:
        """Create the lane locks' TTL index (idempotent)."""
        await self._ttl.ensure(self.coll, self._expiry, name="lease_until_ttl")

    async def acquire_lane(self, lane: str, owner: str, lease_until: dt.datetime) -> bool:
        """Take a lane for ``owner`` until ``lease_until``; False when another holds it."""
        try:
            await self._inserter.insert({"_id": lane, "owner": owner, "lease_until": lease_until})
            return True
        except DuplicateKeyError:
            pass
        # Held — or left behind by a process that died: take it only once its lease has run
        # out. One conditional update decides; of two processes trying, one matches.
        stolen = await self.coll.update_one(
            {"_id": lane, "lease_until": {"$lte": utcnow()}}, {"$set": {"owner": owner, "lease_until": lease_until}}
        )
        return stolen.modified_count == 1

    async def renew_lane(self, lane: str, owner: str, lease_until: dt.datetime) -> bool:
        """Extend a lane ``owner`` holds; False when it was lost."""
        result = await self.coll.update_one({"_id": lane, "owner": owner}, {"$set": {"lease_until": lease_until}})
        return result.matched_count == 1

    async def release_lanes(self, lanes: list[str], owner: str) -> None:
        """Let go of lanes ``owner`` holds."""
        await self.coll.delete_many({"_id": {"$in": lanes}, "owner": owner})
