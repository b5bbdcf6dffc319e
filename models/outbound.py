"""The send queue: messages sent through igsync, on the ``messages`` collection itself.

A message sent through igsync is stored *before* Instagram is called (``delivery_status:
"pending"``) with a ``send`` section: the parts to send (its text, each attachment), each
part's Instagram ``mid`` once accepted, and the queue fields. The message is its own durable
job, so there is nothing to keep consistent between a job and a message:

* ``send_due_at`` — set while the message waits to be sent or is being sent; unset once it is
  ``sent`` or ``failed``. It is also the lease: a worker that takes the message moves it
  forward by the lease, so if that worker dies the message is due again when the lease ends.
  One single-field sparse index (the embedded store plans an index only when every predicate
  is one of its fields).
* ``send.claims`` — how many times it was taken; a claim is guarded by the count it read (a
  worker holding a stale read can never take the same claim twice).
* ``send.owner`` — the worker holding the current claim; every write of a part is guarded by
  it, so a worker whose lease ran out cannot overwrite what its successor did.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from bson import ObjectId
from pymongo import ASCENDING
from pymongo.asynchronous.database import AsyncDatabase

from models.atomic import update_get
from models.sharding import in_channel
from models.timeutil import utcnow

PENDING = "pending"
SENT = "sent"
FAILED = "failed"
# Due sends read per claim: enough that the workers of several processes rarely all want one.
CLAIM_CANDIDATES = 8
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


class OutboundRepository:
    def __init__(self, db: AsyncDatabase) -> None:
        self.coll = db["messages"]

    async def ensure_indexes(self) -> None:
        """The queue's index: due (or lease-expired) sends, most overdue first."""
        await self.coll.create_index([("send_due_at", ASCENDING)], sparse=True, name="send_due")
        # Sends that failed because Meta refused the channel's token: sent when it is reconnected.
        await self.coll.create_index([("send.awaiting_reauth", ASCENDING)], sparse=True, name="send_awaiting_reauth")

    async def claim(self, owner: str, lease_secs: float, now: dt.datetime | None = None) -> dict[str, Any] | None:
        """Take the most overdue send (waiting, or held by a worker whose lease ran out); None
        when there is none. Candidates are read on the index, then one is taken by an update
        guarded by what was read; a candidate another worker took first is skipped for the next
        one (workers of every process read the same head of the queue)."""
        now = now or utcnow()
        lease_until = now + dt.timedelta(seconds=lease_secs)
        candidates = (
            await self.coll.find({"send_due_at": {"$lte": now}}, {"send_due_at": 1, "send.claims": 1, "channel_id": 1})
            .sort("send_due_at", ASCENDING)
            .limit(CLAIM_CANDIDATES)
            .to_list(None)
        )
        for candidate in candidates:
            claims = (candidate.get("send") or {}).get("claims", 0)
            # From here on every write names the channel: routed to its shard.
            held = {"_id": candidate["_id"], "channel_id": candidate["channel_id"]}
            taken = await self.coll.update_one(
                {**held, "send_due_at": candidate["send_due_at"], "send.claims": claims},
                {"$set": {"send_due_at": lease_until, "send.owner": owner}, "$inc": {"send.claims": 1}},
            )
            if taken.modified_count == 1:
                return await self.coll.find_one(held)
        return None

    def _held(self, message: dict[str, Any]) -> dict[str, Any]:
        return {
            "_id": message["_id"],
            "channel_id": message["channel_id"],
            "send.owner": message["send"]["owner"],
            "delivery_status": PENDING,
        }

    async def part_attempted(self, message: dict[str, Any], index: int, at: dt.datetime, lease_secs: float) -> bool:
        """Note that part ``index`` is about to go to Instagram (a successor then knows it may
        have been accepted) and renew the lease for it — a message of many parts may take
        longer than one lease; False when the claim is no longer ours."""
        lease_until = at + dt.timedelta(seconds=lease_secs)
        done = await self.coll.update_one(
            self._held(message), {"$set": {f"send.parts.{index}.attempted_at": at, "send_due_at": lease_until}}
        )
        return done.matched_count == 1

    async def part_sent(self, message: dict[str, Any], index: int, mid: str) -> None:
        """Record the ``mid`` Instagram gave part ``index`` on the part (the message's ``mids``
        are added by the caller, whose unique index decides echo collisions)."""
        await self.coll.update_one(
            {"_id": message["_id"], "channel_id": message["channel_id"]}, {"$set": {f"send.parts.{index}.mid": mid}}
        )

    async def finish(
        self,
        message_id: ObjectId,
        status: str,
        error: dict[str, Any] | None = None,
        *,
        awaiting_reauth: ObjectId | None = None,
        channel_id: ObjectId | None = None,
    ) -> bool:
        """``sent`` or ``failed`` (with ``delivery_error``): off the queue. False if it already was.
        ``awaiting_reauth``: it failed on the channel's refused token; reconnecting sends it."""
        fields: dict[str, Any] = {"delivery_status": status, "delivery_error": error, "send.finished_at": utcnow()}
        if awaiting_reauth is not None:
            fields["send.awaiting_reauth"] = awaiting_reauth
        done = await self.coll.update_one(
            in_channel({"_id": message_id, "delivery_status": PENDING}, channel_id),
            {"$set": fields, "$unset": {"send_due_at": ""}},
        )
        return done.modified_count == 1

    async def retry_later(self, message: dict[str, Any], due_at: dt.datetime, error: dict[str, Any]) -> bool:
        """Give the claim back, due again at ``due_at`` (a transient failure)."""
        done = await self.coll.update_one(
            self._held(message),
            {"$set": {"send_due_at": due_at, "send.last_error": error}, "$inc": {"send.attempts": 1}},
        )
        return done.matched_count == 1

    async def requeue_failed(self, message_id: ObjectId, channel_id: ObjectId | None = None) -> dict[str, Any] | None:
        """A failed send back to pending, due now, with a fresh count of attempts; None unless
        it was ``failed`` (one guarded update: two retries of one message requeue it once)."""
        guard = in_channel({"_id": message_id, "delivery_status": FAILED}, channel_id)
        return await update_get(self.coll, guard, _requeue())

    async def requeue_awaiting_reauth(self, channel_id: ObjectId) -> int:
        """Sends that failed on the channel's refused token, pending again; how many."""
        docs = await self.coll.find({"send.awaiting_reauth": channel_id}, {"_id": 1}).to_list(None)
        requeued = 0
        for doc in docs:
            result = await self.coll.update_one({"_id": doc["_id"], "delivery_status": FAILED}, _requeue())
            requeued += result.modified_count
        return requeued

    async def queue_depth(self) -> int:
        """Sends waiting or in progress (on the sparse index)."""
        return await self.coll.count_documents({"send_due_at": {"$gte": EPOCH}})


def _requeue() -> dict[str, Any]:
    """The update that puts a failed send back on the queue, due now, with fresh attempts."""
    now = utcnow()
    return {
        "$set": {
            "delivery_status": PENDING,
            "delivery_error": None,
            "send_due_at": now,
            "send.attempts": 0,
            "send.retried_at": now,
        },
        "$unset": {"send.awaiting_reauth": ""},
    }
