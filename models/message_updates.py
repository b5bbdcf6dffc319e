"""Changes to stored messages after they arrived: reactions, edits, unsends, reads, media results.

Every method here is one guarded, atomic update whose *filter* says "this change would
still change something". A redelivered event therefore matches nothing and returns
``None`` (or an empty list): the caller tells "already applied" from "message unknown"
with one more read, and publishes inbox events only for real changes.

User text never reaches an aggregation expression unwrapped: it goes through
``$literal`` so that a message starting with ``$`` is text, not a field path.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from bson import ObjectId
from pymongo import ASCENDING, ReturnDocument
from pymongo.asynchronous.database import AsyncDatabase

# Content-bearing fields an unsend clears (the message stays, as Instagram shows "unsent").
UNSENT_CLEARED = {
    "content": "",
    "attachments": [],
    "media_url": None,
    "media_file": None,
    "transcription": None,
    "edit_history": [],
    "reply_to": None,
    "quick_reply": None,
    "postback": None,
    "reactions": [],
}


def _without(array_field: str, by: str) -> dict[str, Any]:
    """``array_field`` minus the entries whose ``by`` is ``by`` (aggregation expression)."""
    return {
        "$filter": {
            "input": {"$ifNull": [f"${array_field}", []]},
            "as": "entry",
            "cond": {"$ne": ["$$entry.by", by]},
        }
    }


class MessageUpdateRepository:
    """Updates of the ``messages`` collection owned by :mod:`server.message_events` and
    :mod:`server.media` (inserts and the dedup fields stay in :mod:`models.messages`)."""

    def __init__(self, db: AsyncDatabase) -> None:
        self.coll = db["messages"]

    async def ensure_indexes(self) -> None:
        # Read receipts look for the unread messages of one side up to a time; without
        # read_at in the key every receipt would walk the whole conversation.
        await self.coll.create_index(
            [("conversation_id", ASCENDING), ("type", ASCENDING), ("read_at", ASCENDING), ("sent_at", ASCENDING)],
            name="conversation_type_read_sent",
        )

    async def find_by_mid(self, channel_id: ObjectId, mid: str) -> dict[str, Any] | None:
        return await self.coll.find_one({"channel_id": channel_id, "mids": mid})

    async def get(self, message_id: ObjectId) -> dict[str, Any] | None:
        return await self.coll.find_one({"_id": message_id})

    # -- reactions ---------------------------------------------------------------------

    async def set_reaction(
        self, channel_id: ObjectId, mid: str, by: str, reaction: dict[str, Any] | None, at: dt.datetime
    ) -> dict[str, Any] | None:
        """One reaction per person: ``reaction`` replaces theirs, ``None`` removes it.

        ``reaction_clock`` keeps each person's latest event time, so a redelivery (same
        time) or a late, older event (a react redelivered after the unreact) changes nothing.
        """
        entries: list[Any] = [] if reaction is None else [{"$literal": reaction}]
        pipeline = [
            {
                "$set": {
                    "reactions": {"$concatArrays": [_without("reactions", by), entries]},
                    "reaction_clock": {
                        "$concatArrays": [_without("reaction_clock", by), [{"$literal": {"by": by, "at": at}}]]
                    },
                }
            }
        ]
        return await self.coll.find_one_and_update(
            {
                "channel_id": channel_id,
                "mids": mid,
                "is_deleted": {"$ne": True},
                "reaction_clock": {"$not": {"$elemMatch": {"by": by, "at": {"$gte": at}}}},
            },
            pipeline,
            return_document=ReturnDocument.AFTER,
        )

    # -- edits -------------------------------------------------------------------------

    async def apply_edit(
        self, channel_id: ObjectId, mid: str, text: str, num_edit: int | None, at: dt.datetime
    ) -> tuple[dict[str, Any] | None, str | None]:
        """Apply an edit; ``(message, mode)`` with mode ``"current"`` (the text changed),
        ``"history"`` (a late, older edit filled the history) or ``None`` (nothing to do).

        ``num_edit`` orders edits: a higher number becomes the text and the previous text
        goes to ``edit_history``; a redelivery (same number) matches nothing. Without a
        number, an edit whose text differs from the current one counts as the next edit.
        """
        base = {"channel_id": channel_id, "mids": mid, "is_deleted": {"$ne": True}}
        guard: dict[str, Any]
        if num_edit is None:
            guard = {"content": {"$ne": text}}
            next_num: Any = {"$add": [{"$ifNull": ["$num_edit", 0]}, 1]}
        else:
            guard = {"num_edit": {"$not": {"$gte": num_edit}}}
            next_num = num_edit
        pipeline = [
            {
                "$set": {
                    "edit_history": {
                        "$concatArrays": [
                            {"$ifNull": ["$edit_history", []]},
                            [
                                {
                                    "content": "$content",
                                    "num_edit": {"$ifNull": ["$num_edit", 0]},
                                    "at": {"$ifNull": ["$edited_at", "$sent_at"]},
                                }
                            ],
                        ]
                    },
                    "content": {"$literal": text},
                    "num_edit": next_num,
                    "edited_at": at,
                }
            }
        ]
        doc = await self.coll.find_one_and_update({**base, **guard}, pipeline, return_document=ReturnDocument.AFTER)
        if doc is not None or num_edit is None:
            return doc, ("current" if doc is not None else None)
        # An older edit arriving after a newer one: keep its text in the history, in order.
        doc = await self.coll.find_one_and_update(
            {**base, "num_edit": {"$gt": num_edit}, "edit_history.num_edit": {"$ne": num_edit}},
            {
                "$push": {
                    "edit_history": {
                        "$each": [{"content": text, "num_edit": num_edit, "at": at}],
                        "$sort": {"num_edit": 1},
                    }
                }
            },
            return_document=ReturnDocument.AFTER,
        )
        return doc, ("history" if doc is not None else None)

    # -- unsend ------------------------------------------------------------------------

    async def mark_unsent(self, channel_id: ObjectId, mid: str, at: dt.datetime) -> dict[str, Any] | None:
        return await self.coll.find_one_and_update(
            {"channel_id": channel_id, "mids": mid, "is_deleted": {"$ne": True}},
            {"$set": {**UNSENT_CLEARED, "is_deleted": True, "deleted_at": at}},
            return_document=ReturnDocument.AFTER,
        )

    # -- read receipts -----------------------------------------------------------------

    async def mark_read(
        self, conversation_id: ObjectId, types: tuple[str, ...], up_to: dt.datetime, at: dt.datetime
    ) -> list[dict[str, Any]]:
        """Set ``read_at`` on every unread message of ``types`` sent up to ``up_to``; the
        messages this call changed (a per-call marker tells them from a concurrent twin's)."""
        marker = uuid.uuid4().hex
        query = {
            "conversation_id": conversation_id,
            "type": {"$in": list(types)},
            "read_at": None,
            "sent_at": {"$lte": up_to},
        }
        result = await self.coll.update_many(query, {"$set": {"read_at": at, "read_marker": marker}})
        if result.modified_count == 0:
            return []
        return (
            await self.coll.find(
                {"conversation_id": conversation_id, "type": {"$in": list(types)}, "read_marker": marker}
            )
            .sort([("sent_at", ASCENDING), ("_id", ASCENDING)])
            .to_list(None)
        )

    # -- reply links and media results ---------------------------------------------------

    async def link_reply(self, message_id: ObjectId, target_id: ObjectId) -> dict[str, Any] | None:
        return await self.coll.find_one_and_update(
            {"_id": message_id, "reply_to.mid": {"$exists": True}},
            {"$set": {"reply_to.message_id": target_id}},
            return_document=ReturnDocument.AFTER,
        )

    async def set_media_result(self, message_id: ObjectId, fields: dict[str, Any]) -> dict[str, Any] | None:
        """Record one downloaded (or failed) attachment; never on an unsent message."""
        return await self.coll.find_one_and_update(
            {"_id": message_id, "is_deleted": {"$ne": True}},
            {"$set": fields},
            return_document=ReturnDocument.AFTER,
        )

    async def set_processing_status(self, message_id: ObjectId, status: str) -> dict[str, Any] | None:
        return await self.coll.find_one_and_update(
            {"_id": message_id, "is_deleted": {"$ne": True}, "processing_status": {"$ne": status}},
            {"$set": {"processing_status": status}},
            return_document=ReturnDocument.AFTER,
        )
