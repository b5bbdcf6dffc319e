"""Changes to stored messages after they arrived: reactions, edits, unsends, reads, media results.

Every change is one guarded, atomic update (:func:`models.guarded.guarded_update`): the
filter is the message's key — ``mid_keys`` (channel + mid) or ``_id`` — and the condition
"this would still change something" is evaluated inside the update. A redelivered event
therefore leaves the document as it was and reports ``applied=False``; a mid we never
stored reports no document at all. Both in one round trip, on an index.

User text never reaches an aggregation expression unwrapped: it goes through
``$literal`` so that a message starting with ``$`` is text, not a field path.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from bson import ObjectId
from pymongo import ASCENDING
from pymongo.asynchronous.database import AsyncDatabase

from models.guarded import Outcome, field, guarded_update, lit
from models.indexes import drop_superseded
from models.messages import mid_key
from models.sharding import in_channel

# Content-bearing fields an unsend clears (the message stays, as Instagram shows "unsent").
UNSENT_CLEARED: dict[str, Any] = {
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
NOT_DELETED = {"$ne": [field("is_deleted"), True]}


def _entries(array_field: str, cond: Any, name: str = "entry") -> dict[str, Any]:
    return {"$filter": {"input": {"$ifNull": [field(array_field), []]}, "as": name, "cond": cond}}


def _without(array_field: str, by: str) -> dict[str, Any]:
    """``array_field`` minus the entries whose ``by`` is ``by``."""
    return _entries(array_field, {"$ne": ["$$entry.by", by]})


class MessageUpdateRepository:
    """Updates of the ``messages`` collection owned by :mod:`server.ingest.changes` and
    :mod:`server.media.service` (inserts and the dedup fields stay in :mod:`models.messages`)."""

    def __init__(self, db: AsyncDatabase) -> None:
        self.coll = db["messages"]

    async def ensure_indexes(self) -> None:
        # Lookups by mid use the foundation's unique ``(channel_id, mid_keys)`` index.
        # Read receipts look for the unread messages of one side up to a time; without
        # read_at in the key every receipt would walk the whole conversation.
        """Create the indexes the message updates rely on (idempotent)."""
        await self.coll.create_index(
            [("channel_id", ASCENDING), ("conversation_id", ASCENDING), ("type", ASCENDING), ("read_at", ASCENDING),
             ("sent_at", ASCENDING)],
            name="channel_conversation_type_read_sent",
        )  # fmt: skip
        await drop_superseded(self.coll, ["conversation_type_read_sent"])

    @staticmethod
    def key(channel_id: ObjectId, mid: str) -> dict[str, Any]:
        """The unique-index filter that finds a message by one of its mids."""
        return {"channel_id": channel_id, "mid_keys": mid_key(channel_id, mid)}

    async def find_by_mid(self, channel_id: ObjectId, mid: str) -> dict[str, Any] | None:
        """A message by one of its mids on a channel."""
        return await self.coll.find_one(self.key(channel_id, mid))

    async def get(self, message_id: ObjectId, channel_id: ObjectId | None = None) -> dict[str, Any] | None:
        """A message by id (routed to its shard when the channel is given)."""
        return await self.coll.find_one(in_channel({"_id": message_id}, channel_id))

    # -- reactions ---------------------------------------------------------------------

    async def set_reaction(
        self, channel_id: ObjectId, mid: str, by: str, reaction: dict[str, Any] | None, at: dt.datetime
    ) -> Outcome:
        """One reaction per person: ``reaction`` replaces theirs, ``None`` removes it.

        ``reaction_clock`` keeps each person's latest event time, so a redelivery (same
        time) or a late, older event (a react redelivered after the unreact) changes nothing.
        """
        newer_seen = _entries("reaction_clock", {"$and": [{"$eq": ["$$entry.by", by]}, {"$gte": ["$$entry.at", at]}]})
        guard = {"$and": [NOT_DELETED, {"$eq": [{"$size": newer_seen}, 0]}]}
        entries: list[Any] = [] if reaction is None else [lit(reaction)]
        return await guarded_update(
            self.coll,
            self.key(channel_id, mid),
            guard,
            {
                "reactions": {"$concatArrays": [_without("reactions", by), entries]},
                "reaction_clock": {"$concatArrays": [_without("reaction_clock", by), [lit({"by": by, "at": at})]]},
            },
        )

    # -- edits -------------------------------------------------------------------------

    async def apply_edit(
        self, channel_id: ObjectId, mid: str, text: str, num_edit: int | None, at: dt.datetime
    ) -> tuple[Outcome, str | None]:
        """Apply an edit; the outcome and its mode: ``"current"`` (the text changed),
        ``"history"`` (a late, older edit filled the history) or ``None`` (nothing to do).

        ``num_edit`` orders edits: a higher number becomes the text and the previous text
        goes to ``edit_history``; a redelivery (same number) changes nothing. Without a
        number, an edit whose text differs from the current one counts as the next edit.
        """
        if num_edit is None:
            newer = {"$ne": [field("content"), lit(text)]}
            next_num: Any = {"$add": [{"$ifNull": [field("num_edit"), 0]}, 1]}
        else:
            newer = {"$lt": [{"$ifNull": [field("num_edit"), -1]}, num_edit]}
            next_num = lit(num_edit)
        previous = {
            "content": field("content"),
            "num_edit": {"$ifNull": [field("num_edit"), 0]},
            "at": {"$ifNull": [field("edited_at"), field("sent_at")]},
        }
        outcome = await guarded_update(
            self.coll,
            self.key(channel_id, mid),
            {"$and": [NOT_DELETED, newer]},
            {
                "edit_history": {"$concatArrays": [{"$ifNull": [field("edit_history"), []]}, [previous]]},
                "content": lit(text),
                "num_edit": next_num,
                "edited_at": lit(at),
            },
        )
        if outcome.doc is None or outcome.applied or num_edit is None:
            return outcome, ("current" if outcome.applied else None)
        # An older edit arriving after a newer one: keep its text in the history, in order.
        known = _entries("edit_history", {"$eq": ["$$entry.num_edit", num_edit]})
        late = {
            "$and": [
                NOT_DELETED,
                {"$gt": [{"$ifNull": [field("num_edit"), 0]}, num_edit]},
                {"$eq": [{"$size": known}, 0]},
            ]
        }
        outcome = await guarded_update(
            self.coll,
            {"_id": outcome.doc["_id"]},
            late,
            {
                "edit_history": {
                    "$concatArrays": [
                        _entries("edit_history", {"$lt": ["$$entry.num_edit", num_edit]}),
                        [lit({"content": text, "num_edit": num_edit, "at": at})],
                        _entries("edit_history", {"$gt": ["$$entry.num_edit", num_edit]}),
                    ]
                }
            },
        )
        return outcome, ("history" if outcome.applied else None)

    # -- unsend ------------------------------------------------------------------------

    async def mark_unsent(self, channel_id: ObjectId, mid: str, at: dt.datetime) -> Outcome:
        """Apply an unsend: content and attachments cleared, once; what it changed."""
        sets: dict[str, Any] = {name: lit(value) for name, value in UNSENT_CLEARED.items()}
        sets.update(is_deleted=lit(True), deleted_at=lit(at))
        # The referral stays (where the conversation came from), without our copies of the ad's
        # creative: the unsend deletes the message's stored files, these with the rest.
        sets["referral"] = {
            "$cond": [
                {"$eq": [{"$type": field("referral")}, "object"]},
                {"$mergeObjects": [field("referral"), lit({"media": None})]},
                "$$REMOVE",  # no referral: none is made up
            ]
        }
        return await guarded_update(self.coll, self.key(channel_id, mid), NOT_DELETED, sets)

    # -- read receipts -----------------------------------------------------------------

    async def mark_read(
        self,
        channel_id: ObjectId,
        conversation_id: ObjectId,
        types: tuple[str, ...],
        up_to: dt.datetime,
        at: dt.datetime,
    ) -> list[dict[str, Any]]:
        """Set ``read_at`` on every unread message of ``types`` sent up to ``up_to``; the
        messages this call changed (a per-call marker tells them from a concurrent twin's).

        One query per type, each an equality/range on the read index (an ``$in`` would
        make SecantusDB scan)."""
        marker = uuid.uuid4().hex
        changed: list[dict[str, Any]] = []
        for kind in types:
            key = {
                "channel_id": channel_id,
                "conversation_id": conversation_id,
                "type": kind,
                "sent_at": {"$lte": up_to},
            }
            result = await self.coll.update_many(
                {**key, "read_at": None}, {"$set": {"read_at": at, "read_marker": marker}}
            )
            if result.modified_count:
                rows = await self.coll.find({**key, "read_at": at}).to_list(None)
                changed.extend(r for r in rows if r.get("read_marker") == marker)
        return sorted(changed, key=lambda r: (r["sent_at"], r["_id"]))

    async def read_by(
        self,
        channel_id: ObjectId,
        conversation_id: ObjectId,
        types: tuple[str, ...],
        up_to: dt.datetime,
        at: dt.datetime,
    ) -> list[dict[str, Any]]:
        """The messages of ``types`` up to ``up_to`` whose ``read_at`` is ``at``: those a read
        receipt of that time marked (for its redelivery to publish them again)."""
        rows: list[dict[str, Any]] = []
        for kind in types:
            key = {"channel_id": channel_id, "conversation_id": conversation_id, "type": kind,
                   "sent_at": {"$lte": up_to}, "read_at": at}  # fmt: skip
            rows.extend(await self.coll.find(key).to_list(None))
        return sorted(rows, key=lambda r: (r["sent_at"], r["_id"]))

    # -- reply links and media results ---------------------------------------------------

    async def link_reply(self, message_id: ObjectId, target_id: ObjectId) -> Outcome:
        """Link a reply to the message it answers, unless already linked; what it changed."""
        has_reply = {"$ne": [{"$type": field("reply_to.mid")}, "missing"]}
        return await guarded_update(
            self.coll,
            {"_id": message_id},
            {"$and": [NOT_DELETED, has_reply]},
            {"reply_to": {"$mergeObjects": [field("reply_to"), lit({"message_id": target_id})]}},
        )

    async def set_media_result(
        self,
        message_id: ObjectId,
        attachment_indexes: list[int],
        paths: list[str],
        result: dict[str, Any],
        top: dict[str, Any],
    ) -> Outcome:
        """Merge ``result`` into the listed attachments and into the objects at ``paths``
        (``reply_to.story``, ``referral.media.photo``…, created if missing), set the ``top``
        fields — never on an unsent message."""
        sets: dict[str, Any] = {name: lit(value) for name, value in top.items()}
        if attachment_indexes:
            element = {"$arrayElemAt": [field("attachments"), "$$i"]}
            sets["attachments"] = {
                "$map": {
                    "input": {"$range": [0, {"$size": {"$ifNull": [field("attachments"), []]}}]},
                    "as": "i",
                    "in": {
                        "$cond": [
                            {"$in": ["$$i", lit(attachment_indexes)]},
                            {"$mergeObjects": [element, lit(result)]},
                            element,
                        ]
                    },
                }
            }
        trees: dict[str, dict[str, Any]] = {}
        for path in paths:
            head, *rest = path.split(".")
            node = trees.setdefault(head, {})
            for part in rest[:-1]:
                node = node.setdefault(part, {})
            node[rest[-1]] = None
        for head, tree in trees.items():
            sets[head] = _merged_into(head, tree, result)
        return await guarded_update(self.coll, {"_id": message_id}, NOT_DELETED, sets)

    async def set_processing_status(self, message_id: ObjectId, status: str) -> Outcome:
        """Set a message's ``processing_status`` unless it is already that; what it changed."""
        return await guarded_update(
            self.coll,
            {"_id": message_id},
            {"$and": [NOT_DELETED, {"$ne": [field("processing_status"), status]}]},
            {"processing_status": lit(status)},
        )


def _merged_into(prefix: str, tree: dict[str, Any], result: dict[str, Any]) -> dict[str, Any]:
    """An aggregation expression for the object at ``prefix`` with ``result`` merged into each
    leaf of ``tree`` (``{"media": {"photo": None}}``): every level keeps what it had, and a
    missing level starts empty (``$mergeObjects`` skips null)."""
    children = {
        name: {"$mergeObjects": [field(f"{prefix}.{name}"), lit(result)]}
        if subtree is None
        else _merged_into(f"{prefix}.{name}", subtree, result)
        for name, subtree in tree.items()
    }
    return {"$mergeObjects": [field(prefix), children]}
