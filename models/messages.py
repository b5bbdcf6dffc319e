"""The ``messages`` collection: every message of every conversation, stored once.

Uniqueness is the database's job:

* ``(channel_id, mids)`` — a unique *multikey* index over every Instagram message id a
  message is known by (its own ``mid``, the Send API ids given to mark-sent, the mid of
  an echo it absorbed). A redelivered mid, or the echo of a mid given to mark-sent, can
  therefore never be inserted a second time, in any process: the insert itself fails
  with ``DuplicateKeyError``.
* ``(conversation_id, client_message_id)`` — mark-sent's idempotency key.
* ``(conversation_id, pair_key)`` — one message per send: a mark-sent and the echo paired
  with it (see :mod:`models.echo_pairs`) both insert with the send's ``pair_key``, so the
  second of them collides and merges into the first instead of storing a second message.

A message merged into another one (the extra echo of a multi-mid send that arrived before
its mark-sent) stays as a hidden tombstone with ``merged_into`` set: it keeps its mids, so
a redelivery of that echo still collides, and listings skip it.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from bson import ObjectId
from pymongo import ASCENDING, DESCENDING, ReturnDocument
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

TYPE_CUSTOMER = "customer"
TYPE_SUPPORT = "support"
TYPE_AI = "AI"
OUTBOUND_TYPES = (TYPE_SUPPORT, TYPE_AI)
# What an owner message typed in the Instagram app looks like (ingest stores echoes so);
# only such a message may be adopted by a mark-sent.
SOURCE_INSTAGRAM_APP = "instagram_direct"


def collision_fields(exc: DuplicateKeyError) -> set[str]:
    """The fields of the unique index a write collided on (``{"channel_id", "mids"}``…).

    From the server's ``keyPattern``; servers that omit it name the index in ``errmsg``.
    """
    details = exc.details or {}
    pattern = details.get("keyPattern")
    if isinstance(pattern, dict) and pattern:
        return set(pattern)
    text = str(details.get("errmsg") or exc)
    for index, fields in (
        ("channel_mids_unique", {"channel_id", "mids"}),
        ("conversation_client_message_id_unique", {"conversation_id", "client_message_id"}),
        ("conversation_pair_key_unique", {"conversation_id", "pair_key"}),
    ):
        if index in text:
            return fields
    return {"_id"} if "_id_" in text else set()


class MessageRepository:
    def __init__(self, db: AsyncDatabase) -> None:
        self.coll = db["messages"]

    async def ensure_indexes(self) -> None:
        await self.coll.create_index(
            [("channel_id", ASCENDING), ("mids", ASCENDING)],
            unique=True,
            partialFilterExpression={"mids": {"$type": "string"}},
            name="channel_mids_unique",
        )
        await self.coll.create_index(
            [("conversation_id", ASCENDING), ("client_message_id", ASCENDING)],
            unique=True,
            partialFilterExpression={"client_message_id": {"$type": "string"}},
            name="conversation_client_message_id_unique",
        )
        await self.coll.create_index(
            [("conversation_id", ASCENDING), ("pair_key", ASCENDING)],
            unique=True,
            partialFilterExpression={"pair_key": {"$type": "string"}},
            name="conversation_pair_key_unique",
        )
        await self.coll.create_index(
            [("conversation_id", ASCENDING), ("sent_at", ASCENDING), ("_id", ASCENDING)], name="conversation_time"
        )

    async def insert(self, doc: dict[str, Any]) -> dict[str, Any]:
        """Insert; ``DuplicateKeyError`` propagates — it *is* the dedup decision."""
        await self.coll.insert_one(doc)
        return doc

    async def get(self, message_id: ObjectId) -> dict[str, Any] | None:
        return await self.coll.find_one({"_id": message_id})

    async def find_by_mid(self, channel_id: ObjectId, mid: str) -> dict[str, Any] | None:
        return await self.coll.find_one({"channel_id": channel_id, "mids": mid})

    async def find_by_client_message_id(
        self, conversation_id: ObjectId, client_message_id: str
    ) -> dict[str, Any] | None:
        return await self.coll.find_one({"conversation_id": conversation_id, "client_message_id": client_message_id})

    async def find_collisions(
        self, channel_id: ObjectId, conversation_id: ObjectId, mids: list[str], pair_key: str
    ) -> list[dict[str, Any]]:
        """The messages an outbound insert with these mids and this pair_key collided with."""
        clauses: list[dict[str, Any]] = [{"conversation_id": conversation_id, "pair_key": pair_key}]
        if mids:
            clauses.append({"channel_id": channel_id, "mids": {"$in": mids}})
        return await self.coll.find({"$or": clauses}).sort("_id", ASCENDING).to_list(None)

    async def absorb_mid(self, conversation_id: ObjectId, pair_key: str, mid: str) -> dict[str, Any] | None:
        """Record an echo's mid on the message of its send (found by ``pair_key``); None if that
        message does not exist yet. ``DuplicateKeyError`` when another message holds the mid."""
        return await self.coll.find_one_and_update(
            {"conversation_id": conversation_id, "pair_key": pair_key},
            [
                {
                    "$set": {
                        "mids": {"$cond": [{"$in": [mid, "$mids"]}, "$mids", {"$concatArrays": ["$mids", [mid]]}]},
                        "mid": {"$ifNull": ["$mid", mid]},
                    }
                }
            ],
            return_document=ReturnDocument.AFTER,
        )

    async def adopt(
        self, message_id: ObjectId, pair_key: str, fields: dict[str, Any], add_mids: list[str]
    ) -> dict[str, Any] | None:
        """Turn a stored Instagram-app message into the outbound message of send ``pair_key``.

        Guarded, so that it happens at most once and only to a native-looking message that is
        not paired with another send; None when the guard did not match.
        """
        update: dict[str, Any] = {"$set": {**fields, "pair_key": pair_key}}
        if add_mids:
            update["$addToSet"] = {"mids": {"$each": add_mids}}
        return await self.coll.find_one_and_update(
            {
                "_id": message_id,
                "source": SOURCE_INSTAGRAM_APP,
                "type": TYPE_SUPPORT,
                "merged_into": {"$exists": False},
                "$or": [{"pair_key": {"$exists": False}}, {"pair_key": None}, {"pair_key": pair_key}],
            },
            update,
            return_document=ReturnDocument.AFTER,
        )

    async def merge_into(self, message_id: ObjectId, primary_id: ObjectId) -> dict[str, Any] | None:
        """Hide a native-looking message that another message now stands for (keeps its mids)."""
        return await self.coll.find_one_and_update(
            {"_id": message_id, "source": SOURCE_INSTAGRAM_APP, "merged_into": {"$exists": False}},
            {"$set": {"merged_into": primary_id}},
            return_document=ReturnDocument.AFTER,
        )

    async def mark_answered(self, conversation_id: ObjectId, up_to: dt.datetime) -> int:
        """Mark the customer messages sent up to ``up_to`` answered (an owner reply came)."""
        result = await self.coll.update_many(
            {
                "conversation_id": conversation_id,
                "type": TYPE_CUSTOMER,
                "is_answered": False,
                "sent_at": {"$lte": up_to},
            },
            {"$set": {"is_answered": True}},
        )
        return result.modified_count

    async def update(
        self, message_id: ObjectId, update: dict[str, Any], query: dict[str, Any] | None = None
    ) -> dict[str, Any] | None:
        return await self.coll.find_one_and_update(
            {"_id": message_id, **(query or {})}, update, return_document=ReturnDocument.AFTER
        )

    async def page(
        self,
        conversation_id: ObjectId,
        *,
        limit: int,
        after: dict[str, Any] | None = None,
        before: dict[str, Any] | None = None,
    ) -> tuple[list[dict[str, Any]], bool]:
        """Messages oldest first, and whether more exist in the direction paged.

        ``after``/``before`` are message documents (the anchors). Without ``after`` we page
        backwards from the newest (or from ``before``), so the query runs newest-first and is
        reversed; one extra row tells ``has_more`` without a count.
        """
        query: dict[str, Any] = {"conversation_id": conversation_id, "merged_into": {"$exists": False}}
        bounds = []
        if after is not None:
            bounds.append(_beyond(after, "$gt"))
        if before is not None:
            bounds.append(_beyond(before, "$lt"))
        if bounds:
            query["$and"] = bounds
        if after is not None:
            order = [("sent_at", ASCENDING), ("_id", ASCENDING)]
        else:
            order = [("sent_at", DESCENDING), ("_id", DESCENDING)]
        rows = await self.coll.find(query).sort(order).limit(limit + 1).to_list(None)
        has_more = len(rows) > limit
        rows = rows[:limit]
        if after is None:
            rows.reverse()
        return rows, has_more


def _beyond(anchor: dict[str, Any], op: str) -> dict[str, Any]:
    """Rows strictly after (``$gt``) or before (``$lt``) ``anchor`` in (sent_at, _id) order."""
    return {
        "$or": [
            {"sent_at": {op: anchor["sent_at"]}},
            {"sent_at": anchor["sent_at"], "_id": {op: anchor["_id"]}},
        ]
    }
