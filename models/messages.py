"""The ``messages`` collection: every message of every conversation, stored once.

Uniqueness is the database's job, with two unique indexes on *single* fields (compound or
partial indexes are not used by the embedded server's query planner for these lookups, which
then scan the collection — measured in ``docs/performance.md``; single-field keys are fast on
it and on MongoDB alike):

* ``mid_keys`` — unique, multikey: ``"<channel_id>:<mid>"`` for every Instagram message id
  the message is known by (its own ``mid``, the Send API ids given to mark-sent, the mid of an
  echo it absorbed). A redelivered mid, or the echo of a mid given to mark-sent, can never be
  inserted a second time, in any process: the insert itself fails with ``DuplicateKeyError``.
  Qualified by channel because the same mid legitimately reaches two connected accounts that
  message each other. A message with no Instagram id yet gets a local key, so that every
  document has at least one (an empty array would collide in a unique index).
* ``client_key`` — unique, sparse: ``"<conversation_id>:<client_message_id>"``, mark-sent's
  idempotency key.

``mids`` keeps the raw Instagram ids for people and the API; the repository derives the keys
from it on every write, so callers never build them.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from bson import ObjectId
from pymongo import ASCENDING, DESCENDING
from pymongo.asynchronous.database import AsyncDatabase

from models.atomic import update_get
from models.group_commit import GroupInserter

TYPE_CUSTOMER = "customer"
TYPE_SUPPORT = "support"
TYPE_AI = "AI"
OUTBOUND_TYPES = (TYPE_SUPPORT, TYPE_AI)
# An owner message first seen as an echo from the Instagram app (not sent through igsync).
SOURCE_INSTAGRAM_DIRECT = "instagram_direct"
# Rows sharing the anchor's millisecond that a page can step over (see ``page``).
_TIE_SLACK = 20


def mid_key(channel_id: ObjectId, mid: str) -> str:
    return f"{channel_id}:{mid}"


def client_key(conversation_id: ObjectId, client_message_id: str) -> str:
    return f"{conversation_id}:{client_message_id}"


def with_keys(doc: dict[str, Any]) -> dict[str, Any]:
    """Fill ``mid_keys`` and ``client_key`` from ``mids`` and ``client_message_id``."""
    mids = [m for m in doc.get("mids") or [] if m]
    keys = [mid_key(doc["channel_id"], m) for m in mids]
    doc["mid_keys"] = keys or [mid_key(doc["channel_id"], f"local:{doc['_id']}")]
    if doc.get("client_message_id"):
        doc["client_key"] = client_key(doc["conversation_id"], doc["client_message_id"])
    return doc


def is_mid_conflict(exc: Exception) -> bool:
    """Whether a ``DuplicateKeyError`` was raised by the mid index (not the client key)."""
    details = getattr(exc, "details", None) or {}
    pattern = details.get("keyPattern") or {}
    return "mid_keys" in pattern or "mid_keys" in str(details.get("errmsg", exc))


class MessageRepository:
    def __init__(self, db: AsyncDatabase) -> None:
        self.coll = db["messages"]
        self._inserter = GroupInserter(self.coll)

    async def ensure_indexes(self) -> None:
        await self.coll.create_index([("mid_keys", ASCENDING)], unique=True, name="mid_keys_unique")
        await self.coll.create_index([("client_key", ASCENDING)], unique=True, sparse=True, name="client_key_unique")
        await self.coll.create_index(
            [("conversation_id", ASCENDING), ("sent_at", ASCENDING), ("_id", ASCENDING)], name="conversation_time"
        )
        # The stored-duplicates audit (igsync_duplicates_stored) reads the last hour's messages by
        # this range; without it the embedded store scans the collection (bench/ops_monitor.py).
        await self.coll.create_index([("created_at", ASCENDING)], name="created_at")

    async def insert(self, doc: dict[str, Any]) -> dict[str, Any]:
        """Insert (group-committed with concurrent inserts); ``DuplicateKeyError`` propagates —
        it *is* the dedup decision."""
        await self._inserter.insert(with_keys(doc))
        return doc

    async def get(self, message_id: ObjectId) -> dict[str, Any] | None:
        return await self.coll.find_one({"_id": message_id})

    async def get_many(self, message_ids: list[ObjectId]) -> dict[ObjectId, dict[str, Any]]:
        """Several messages by id in one round trip (trigger delivery reads a batch)."""
        docs = await self.coll.find({"_id": {"$in": message_ids}}).to_list(None)
        return {d["_id"]: d for d in docs}

    async def find_by_mid(self, channel_id: ObjectId, mid: str) -> dict[str, Any] | None:
        return await self.coll.find_one({"mid_keys": mid_key(channel_id, mid)})

    async def find_by_client_message_id(
        self, conversation_id: ObjectId, client_message_id: str
    ) -> dict[str, Any] | None:
        return await self.coll.find_one({"client_key": client_key(conversation_id, client_message_id)})

    async def add_mids(self, message: dict[str, Any], mids: list[str]) -> dict[str, Any] | None:
        """Record more Instagram ids on a message (an absorbed echo, Send API ids); the message after.

        Raises ``DuplicateKeyError`` when one of them already belongs to another message."""
        keys = [mid_key(message["channel_id"], m) for m in mids]
        update: dict[str, Any] = {"$addToSet": {"mids": {"$each": mids}, "mid_keys": {"$each": keys}}}
        if not message.get("mid") and mids:
            update["$set"] = {"mid": mids[0]}
        return await update_get(self.coll, {"_id": message["_id"]}, update)

    async def mark_answered(self, conversation_id: ObjectId, up_to: dt.datetime) -> int:
        """Mark the customer messages sent up to ``up_to`` answered (an owner reply came)."""
        result = await self.coll.update_many(
            {
                "conversation_id": conversation_id,
                "sent_at": {"$lte": up_to},
                "type": TYPE_CUSTOMER,
                "is_answered": False,
            },
            {"$set": {"is_answered": True}},
        )
        return result.modified_count

    async def update(
        self, message_id: ObjectId, update: dict[str, Any], query: dict[str, Any] | None = None
    ) -> dict[str, Any] | None:
        return await update_get(self.coll, {"_id": message_id, **(query or {})}, update)

    async def page(
        self,
        conversation_id: ObjectId,
        *,
        limit: int,
        after: dict[str, Any] | None = None,
        before: dict[str, Any] | None = None,
    ) -> tuple[list[dict[str, Any]], bool]:
        """Messages oldest first, and whether more exist in the direction paged.

        ``after``/``before`` are message documents (the anchors); order is (sent_at, _id).
        Without ``after`` we page backwards from the newest (or from ``before``), so the query
        runs newest-first and is reversed. The query is one range on ``sent_at`` (served by
        the compound index); rows tied with an anchor's time are sorted out here, and one extra
        row tells ``has_more`` without a count.
        """
        time_range: dict[str, Any] = {}
        if after is not None:
            time_range["$gte"] = after["sent_at"]
        if before is not None:
            time_range["$lte"] = before["sent_at"]
        query: dict[str, Any] = {"conversation_id": conversation_id}
        if time_range:
            query["sent_at"] = time_range
        forward = after is not None
        direction = ASCENDING if forward else DESCENDING
        slack = _TIE_SLACK if (after is not None or before is not None) else 0
        fetch = limit + 1 + slack
        raw = await self.coll.find(query).sort([("sent_at", direction), ("_id", direction)]).limit(fetch).to_list(None)
        rows = [r for r in raw if _inside(r, after, before)]
        has_more = len(rows) > limit or len(raw) == fetch
        rows = rows[:limit]
        if not forward:
            rows.reverse()
        return rows, has_more

    async def count_suspected_duplicates(self, since: dt.datetime, window_secs: int) -> int:
        """Outbound texts stored twice since ``since``: in one conversation, the same content
        as an app/AI message *and* as an echo no dedup layer absorbed, within ``window_secs``.

        The failure dedup exists to prevent, measured after the fact. It reads only the
        messages created since ``since`` (the ``created_at`` index). A text the owner really
        typed in the Instagram app right after the AI sent the same one also counts: rare,
        hence "suspected".
        """
        pipeline: list[dict[str, Any]] = [
            {"$match": {"created_at": {"$gte": since}, "type": {"$in": list(OUTBOUND_TYPES)}}},
            {
                "$group": {
                    "_id": {"conversation": "$conversation_id", "content": "$content_hash"},
                    "sources": {"$addToSet": "$source"},
                    "first": {"$min": "$created_at"},
                    "last": {"$max": "$created_at"},
                    "count": {"$sum": 1},
                }
            },
            {"$match": {"count": {"$gt": 1}, "sources": SOURCE_INSTAGRAM_DIRECT}},
            {
                "$project": {
                    "spread_ms": {"$subtract": ["$last", "$first"]},
                    "sent_by_us": {"$size": {"$setDifference": ["$sources", [SOURCE_INSTAGRAM_DIRECT]]}},
                }
            },
            {"$match": {"sent_by_us": {"$gt": 0}, "spread_ms": {"$lte": window_secs * 1000}}},
            {"$count": "suspected"},
        ]
        rows = await (await self.coll.aggregate(pipeline)).to_list(None)
        return int(rows[0]["suspected"]) if rows else 0


def _inside(row: dict[str, Any], after: dict[str, Any] | None, before: dict[str, Any] | None) -> bool:
    """Strictly after ``after`` and strictly before ``before`` in (sent_at, _id) order."""
    key = (row["sent_at"], row["_id"])
    if after is not None and key <= (after["sent_at"], after["_id"]):
        return False
    return before is None or key < (before["sent_at"], before["_id"])
