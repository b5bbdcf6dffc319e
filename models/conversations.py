"""The ``conversations`` collection: one thread per (channel, customer).

A conversation embeds a snapshot of its customer (the API's ``Conversation.customer``),
so that the inbox list and every event are one read, not a join; the snapshot is
refreshed when the profile changes.

Applying a message to its conversation is one atomic, *idempotent* update: it is guarded
by the message id (``recent_message_ids``), so a webhook redelivered after a half-finished
attempt (message stored, conversation not yet updated, MongoDB gone → 503) repairs the
conversation instead of counting the message twice.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from bson import ObjectId
from pymongo import ASCENDING, DESCENDING, ReturnDocument
from pymongo.asynchronous.database import AsyncDatabase

from models.atomic import upsert_get
from models.customers import PROFILE_FIELDS
from models.guarded import guarded_update, lit
from models.timeutil import UTC, utcnow

STATUS_NEEDS_REPLY = "needs_reply"
STATUS_ANSWERED = "answered"
# How many applied message ids a conversation remembers for the idempotency guard. A
# redelivery that comes back after more messages than this were applied only risks an
# unread count off by one; Meta retries within seconds to hours, not thousands of messages.
RECENT_IDS_KEPT = 200
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=UTC)


def customer_snapshot(customer: dict[str, Any]) -> dict[str, Any]:
    snap = {"id": customer["_id"], "instagram_id": customer["instagram_id"]}
    for key in PROFILE_FIELDS:
        snap[key] = customer.get(key)
    return snap


def message_summary(message: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": message["_id"],
        "content": message.get("content", ""),
        "type": message["type"],
        "message_type": message.get("message_type", "text"),
        "created_at": message["created_at"],
    }


class ConversationRepository:
    def __init__(self, db: AsyncDatabase) -> None:
        self.coll = db["conversations"]

    async def ensure_indexes(self) -> None:
        await self.coll.create_index(
            [("channel_id", ASCENDING), ("customer_id", ASCENDING)], unique=True, name="channel_customer_unique"
        )
        await self.coll.create_index(
            [("channel_id", ASCENDING), ("customer_instagram_id", ASCENDING)],
            unique=True,
            name="channel_customer_instagram_id_unique",
        )
        await self.coll.create_index(
            [("channel_id", ASCENDING), ("updated_at", DESCENDING), ("_id", DESCENDING)], name="channel_updated"
        )

    async def get(self, conversation_id: ObjectId) -> dict[str, Any] | None:
        return await self.coll.find_one({"_id": conversation_id})

    async def find_by_customer(self, channel_id: ObjectId, customer_instagram_id: str) -> dict[str, Any] | None:
        return await self.coll.find_one({"channel_id": channel_id, "customer_instagram_id": customer_instagram_id})

    async def get_or_create(self, channel_id: ObjectId, customer: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        now = utcnow()
        return await upsert_get(
            self.coll,
            {"channel_id": channel_id, "customer_id": customer["_id"]},
            {
                "$setOnInsert": {
                    "customer_instagram_id": customer["instagram_id"],
                    "customer": customer_snapshot(customer),
                    "source": "instagram",
                    "status": STATUS_NEEDS_REPLY,
                    "unread_count": 0,
                    "last_message": None,
                    "last_message_at": None,
                    "created_at": now,
                    "updated_at": now,
                    "recent_message_ids": [],
                }
            },
        )

    async def apply_message(self, conversation_id: ObjectId, message: dict[str, Any]) -> dict[str, Any] | None:
        """Account for a newly stored message; the conversation after, or None if already applied.

        One pipeline update so that it is atomic: the last message and status follow the
        newest message by Instagram's time (a late redelivery of an old message does not
        push it to the top), a customer message adds one unread and asks for a reply, an
        outbound one answers and clears the unread count (the business has seen the thread).
        ``prev_status`` tells the caller whether earlier customer messages still need
        marking ``is_answered`` — without another read.
        """
        inbound = message["type"] == "customer"
        sent_at = message["sent_at"]
        is_newer = {"$gte": [sent_at, {"$ifNull": ["$last_message_at", _EPOCH]}]}
        new_status = STATUS_NEEDS_REPLY if inbound else STATUS_ANSWERED
        unread = (
            {"$add": [{"$ifNull": ["$unread_count", 0]}, 1]}
            if inbound
            else {"$cond": [is_newer, 0, {"$ifNull": ["$unread_count", 0]}]}
        )
        pipeline = [
            {"$set": {"prev_status": {"$ifNull": ["$status", STATUS_NEEDS_REPLY]}}},
            {
                "$set": {
                    "last_message": {"$cond": [is_newer, {"$literal": message_summary(message)}, "$last_message"]},
                    "last_message_at": {"$cond": [is_newer, sent_at, "$last_message_at"]},
                    "status": {"$cond": [is_newer, new_status, "$status"]},
                    "unread_count": unread,
                    "updated_at": utcnow(),
                    "recent_message_ids": {
                        "$slice": [
                            {"$concatArrays": [{"$ifNull": ["$recent_message_ids", []]}, [message["_id"]]]},
                            -RECENT_IDS_KEPT,
                        ]
                    },
                }
            },
        ]
        return await self.coll.find_one_and_update(
            {"_id": conversation_id, "recent_message_ids": {"$ne": message["_id"]}},
            pipeline,
            return_document=ReturnDocument.AFTER,
        )

    async def touch(self, conversation_id: ObjectId, fields: dict[str, Any] | None = None) -> dict[str, Any] | None:
        return await self.coll.find_one_and_update(
            {"_id": conversation_id},
            {"$set": {**(fields or {}), "updated_at": utcnow()}},
            return_document=ReturnDocument.AFTER,
        )

    async def set_status_answered(self, conversation_id: ObjectId) -> dict[str, Any] | None:
        return await self.touch(conversation_id, {"status": STATUS_ANSWERED, "unread_count": 0})

    async def refresh_customer(self, channel_id: ObjectId, customer: dict[str, Any]) -> dict[str, Any] | None:
        # update_one + find_one on the unique key: SecantusDB's findAndModify scans the
        # collection whatever the filter (see models/guarded.py).
        key = {"channel_id": channel_id, "customer_id": customer["_id"]}
        result = await self.coll.update_one(
            key, {"$set": {"customer": customer_snapshot(customer), "updated_at": utcnow()}}
        )
        return await self.coll.find_one(key) if result.matched_count else None

    async def refresh_last_message(self, conversation_id: ObjectId, message: dict[str, Any]) -> dict[str, Any] | None:
        """Rewrite the summary when the message it shows changed (edit, unsend, adoption)."""
        return await self.coll.find_one_and_update(
            {"_id": conversation_id, "last_message.id": message["_id"]},
            {"$set": {"last_message": message_summary(message), "updated_at": utcnow()}},
            return_document=ReturnDocument.AFTER,
        )

    async def refresh_summary_if_stale(
        self, conversation_id: ObjectId, message: dict[str, Any]
    ) -> dict[str, Any] | None:
        """Like :meth:`refresh_last_message`, but only when the shown text differs — so that
        a redelivered edit or unsend can repair a missed refresh without touching
        ``updated_at`` again. The conversation after, or None when nothing changed."""
        summary = message_summary(message)
        guard = {
            "$and": [
                {"$eq": ["$last_message.id", message["_id"]]},
                {"$ne": ["$last_message.content", lit(summary["content"])]},
            ]
        }
        outcome = await guarded_update(
            self.coll, {"_id": conversation_id}, guard, {"last_message": lit(summary), "updated_at": lit(utcnow())}
        )
        return outcome.doc if outcome.applied else None

    async def mark_read(self, conversation_id: ObjectId) -> dict[str, Any] | None:
        return await self.touch(conversation_id, {"unread_count": 0})

    async def page(
        self,
        channel_ids: list[ObjectId],
        *,
        limit: int,
        updated_since: dt.datetime | None = None,
        before: tuple[dt.datetime, ObjectId] | None = None,
    ) -> list[dict[str, Any]]:
        """Most recently updated first; ``before`` is the (updated_at, _id) of the last row seen."""
        query: dict[str, Any] = {"channel_id": {"$in": channel_ids}}
        if updated_since is not None:
            query["updated_at"] = {"$gte": updated_since}
        if before is not None:
            at, oid = before
            query["$or"] = [{"updated_at": {"$lt": at}}, {"updated_at": at, "_id": {"$lt": oid}}]
        cursor = self.coll.find(query).sort([("updated_at", DESCENDING), ("_id", DESCENDING)]).limit(limit)
        return await cursor.to_list(None)
