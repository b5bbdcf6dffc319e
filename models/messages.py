"""The ``messages`` collection: every message of every conversation, stored once.

Uniqueness is the database's job:

* ``(channel_id, mids)`` — a unique *multikey* index over every Instagram message id a
  message is known by (its own ``mid``, the Send API ids given to mark-sent, the mid of
  an echo it absorbed). A redelivered mid, or the echo of a mid given to mark-sent, can
  therefore never be inserted a second time, in any process: the insert itself fails
  with ``DuplicateKeyError``.
* ``(conversation_id, client_message_id)`` — mark-sent's idempotency key.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from bson import ObjectId
from pymongo import ASCENDING, DESCENDING, ReturnDocument
from pymongo.asynchronous.database import AsyncDatabase

TYPE_CUSTOMER = "customer"
TYPE_SUPPORT = "support"
TYPE_AI = "AI"
OUTBOUND_TYPES = (TYPE_SUPPORT, TYPE_AI)


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
            [("conversation_id", ASCENDING), ("sent_at", ASCENDING), ("_id", ASCENDING)], name="conversation_time"
        )

    async def insert(self, doc: dict[str, Any]) -> dict[str, Any]:
        """Insert; ``DuplicateKeyError`` propagates — it *is* the dedup decision."""
        await self.coll.insert_one(doc)
        return doc

    async def get(self, message_id: ObjectId) -> dict[str, Any] | None:
        return await self.coll.find_one({"_id": message_id})

    async def get_many(self, message_ids: list[ObjectId]) -> dict[ObjectId, dict[str, Any]]:
        """Several messages by id in one round trip (trigger delivery reads a batch)."""
        docs = await self.coll.find({"_id": {"$in": message_ids}}).to_list(None)
        return {d["_id"]: d for d in docs}

    async def find_by_mid(self, channel_id: ObjectId, mid: str) -> dict[str, Any] | None:
        return await self.coll.find_one({"channel_id": channel_id, "mids": mid})

    async def find_by_client_message_id(
        self, conversation_id: ObjectId, client_message_id: str
    ) -> dict[str, Any] | None:
        return await self.coll.find_one({"conversation_id": conversation_id, "client_message_id": client_message_id})

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
        query: dict[str, Any] = {"conversation_id": conversation_id}
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
