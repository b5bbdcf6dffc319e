"""The ``conversations`` collection: one thread per (channel, customer).

A conversation embeds a snapshot of its customer (the API's ``Conversation.customer``),
so that the inbox list and every event are one read, not a join; the snapshot is
refreshed when the profile changes.

Applying a message to its conversation is one atomic, *idempotent* update: it is guarded
by the message id (``recent_message_ids``), so a webhook redelivered after a half-finished
attempt (message stored, conversation not yet updated, MongoDB gone → 503) repairs the
conversation instead of counting the message twice.

Every write stamps a fresh ``rev`` (:func:`stamp`): the repository remembers the latest state
it saw of recent conversations, and a state whose ``rev`` is still the stored one is exactly the
stored document. Applying a message to such a state needs no read-back (:meth:`apply_message`).
"""

from __future__ import annotations

import datetime as dt
from collections import OrderedDict
from typing import Any

from bson import ObjectId
from pymongo import ASCENDING, DESCENDING, UpdateOne
from pymongo.asynchronous.database import AsyncDatabase

from models.atomic import get_or_insert, update_get
from models.customers import PROFILE_FIELDS
from models.group_commit import GroupUpdate, GroupUpdater, Shortcut
from models.guarded import guarded_update, lit
from models.sharding import in_channel
from models.timeutil import UTC, utcnow

STATUS_NEEDS_REPLY = "needs_reply"
STATUS_ANSWERED = "answered"
# How many applied message ids a conversation remembers for the idempotency guard. A
# redelivery that comes back after more messages than this were applied only risks an
# unread count off by one; Meta retries within seconds to hours, not thousands of messages.
RECENT_IDS_KEPT = 32
EPOCH = dt.datetime(1970, 1, 1, tzinfo=UTC)
# Rows sharing the cursor's millisecond that a page can step over (see ``page``).
_TIE_SLACK = 20
# Conversations whose latest seen state is kept for the read-free apply (least recently used
# dropped); a few KiB each.
KNOWN_STATES_KEPT = 4096


def copy_tree(value: Any) -> Any:
    """A copy of a stored document's dicts and lists, sharing its leaves: BSON values
    (ObjectId, datetime, str, numbers) are never changed in place. ``copy.deepcopy`` did the
    same in ~100 µs a conversation (its memo, and ObjectId's reduce protocol), ~5 % of a
    webhook's CPU; this takes ~5 µs."""
    if isinstance(value, dict):
        return {key: copy_tree(item) for key, item in value.items()}
    if isinstance(value, list):
        return [copy_tree(item) for item in value]
    return value


def stamp() -> dict[str, Any]:
    """What every write to a conversation sets besides its own fields: ``updated_at``, and a
    fresh ``rev`` — so a remembered state with the stored ``rev`` is the stored document."""
    return {"updated_at": utcnow(), "rev": ObjectId()}


def customer_snapshot(customer: dict[str, Any]) -> dict[str, Any]:
    """The customer fields a conversation carries, copied from the customer."""
    snap = {"id": customer["_id"], "instagram_id": customer["instagram_id"]}
    for key in PROFILE_FIELDS:
        snap[key] = customer.get(key)
    return snap


def message_summary(message: dict[str, Any]) -> dict[str, Any]:
    """The ``last_message`` summary a conversation keeps of ``message``."""
    return {
        "id": message["_id"],
        "content": message.get("content", ""),
        "type": message["type"],
        "message_type": message.get("message_type", "text"),
        "created_at": message["created_at"],
    }


def applied_to_known(
    known: dict[str, Any], message: dict[str, Any], *, token: ObjectId, rev: ObjectId
) -> Shortcut | None:
    """:meth:`ConversationRepository.apply_message` for a remembered state of the conversation:
    the update that applies ``message`` if the stored document is still ``known`` (same ``rev``),
    and the document it makes — None when ``known`` lacks what the decision reads.

    The update writes what the message decides and leaves the rest to relative operators
    (``$inc``, ``$push``, ``$max``), and its filter holds the state it was decided on (``rev``,
    ``status``, the count, which side of ``last_message_at`` the message falls): applied to any
    document that matches, it stores exactly what the pipeline would. ``rev`` makes the rest of
    the document returned, untouched by the update, the stored one."""
    status, unread, last_at, recent = (
        known.get("status"),
        known.get("unread_count"),
        known.get("last_message_at"),
        known.get("recent_message_ids"),
    )
    if known.get("rev") is None or not isinstance(status, str) or not isinstance(unread, int):
        return None
    if not isinstance(last_at, dt.datetime) or not isinstance(recent, list):
        return None
    inbound = message["type"] == "customer"
    sent = as_stored(message["sent_at"])
    if sent.tzinfo is None or last_at.tzinfo is None:
        return None
    newest = last_at <= sent
    prev_status = status if inbound or newest else STATUS_NEEDS_REPLY
    changes: dict[str, Any] = {
        "last_apply": {"token": token, "prev_status": prev_status},
        "updated_at": utcnow(),
        "rev": rev,
    }
    if newest:
        changes["last_message"] = as_stored(message_summary(message))
        changes["last_message_at"] = sent
        changes["status"] = STATUS_NEEDS_REPLY if inbound else STATUS_ANSWERED
    update: dict[str, Any] = {
        "$set": changes,
        "$push": {"recent_message_ids": {"$each": [message["_id"]], "$slice": -RECENT_IDS_KEPT}},
    }
    after = {**known, **changes, "recent_message_ids": [*recent, message["_id"]][-RECENT_IDS_KEPT:]}
    if inbound:
        added = 0 if message.get("imported") == "backfill" else 1
        update["$inc"] = {"unread_count": added}
        update["$max"] = {"last_customer_message_at": sent}
        after["unread_count"] = unread + added
        after["last_customer_message_at"] = max(known.get("last_customer_message_at") or sent, sent)
    elif newest:
        changes["unread_count"] = after["unread_count"] = 0
    query = {
        "_id": known["_id"],
        "channel_id": message["channel_id"],
        "rev": known["rev"],
        "status": status,
        "unread_count": unread,
        "recent_message_ids": {"$ne": message["_id"]},
        "last_message_at": {"$lte": sent} if newest else {"$gt": sent},
    }
    return Shortcut(query, update, after)


def as_stored(value: Any) -> Any:
    """``value`` as MongoDB gives it back: datetimes truncated to milliseconds."""
    if isinstance(value, dt.datetime):
        return value.replace(microsecond=value.microsecond // 1000 * 1000)
    if isinstance(value, dict):
        return {k: as_stored(v) for k, v in value.items()}
    return value


class ConversationRepository:
    def __init__(self, db: AsyncDatabase, *, known_states: int = KNOWN_STATES_KEPT) -> None:
        self.coll = db["conversations"]
        self._updater = GroupUpdater(self.coll)
        # The latest state seen of recent conversations, by id (see ``apply_message``).
        self._known: OrderedDict[ObjectId, dict[str, Any]] = OrderedDict()
        self._known_states = known_states

    def use_client_bulk_write(self, on: bool) -> None:
        """Whether a message's read-free apply goes with its fallback in one client bulkWrite
        (``models.store.Store.adapt_to_server``); else it is tried alone first."""
        self._updater.client_bulk_write = on

    async def ensure_indexes(self) -> None:
        """Create the collection's indexes (idempotent)."""
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

    async def get(
        self, conversation_id: ObjectId, channel_id: ObjectId | list[ObjectId] | None = None
    ) -> dict[str, Any] | None:
        """A conversation by id, routed to the shard of its channel — or of the caller's channels
        (a list: the REST API knows only the owner's channels)."""
        if isinstance(channel_id, list):
            return await self.coll.find_one({"_id": conversation_id, "channel_id": {"$in": channel_id}})
        return await self.coll.find_one(in_channel({"_id": conversation_id}, channel_id))

    async def get_many(self, conversation_ids: list[ObjectId]) -> dict[ObjectId, dict[str, Any]]:
        """Several conversations by id in one round trip (trigger delivery reads a batch)."""
        docs = await self.coll.find({"_id": {"$in": conversation_ids}}).to_list(None)
        return {d["_id"]: d for d in docs}

    async def find_by_customer(self, channel_id: ObjectId, customer_instagram_id: str) -> dict[str, Any] | None:
        """The conversation of a customer (by Instagram id) on a channel, if any."""
        return await self.coll.find_one({"channel_id": channel_id, "customer_instagram_id": customer_instagram_id})

    async def get_or_create(self, channel_id: ObjectId, customer: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        """The conversation of (channel, customer), created atomically if missing; (doc, created)."""
        now = utcnow()
        key = {"channel_id": channel_id, "customer_id": customer["_id"]}
        new = {
            "_id": ObjectId(),
            **key,
            "customer_instagram_id": customer["instagram_id"],
            "customer": customer_snapshot(customer),
            "source": "instagram",
            "status": STATUS_NEEDS_REPLY,
            "unread_count": 0,
            "last_message": None,
            # Never null, so "is this message newer" is one plain range condition (no $or).
            "last_message_at": EPOCH,
            "created_at": now,
            "updated_at": now,
            "rev": ObjectId(),
            "recent_message_ids": [],
        }
        doc, created = await get_or_insert(self.coll, key, new)
        self._remember(doc)
        return doc, created

    async def apply_message(self, conversation_id: ObjectId, message: dict[str, Any]) -> dict[str, Any] | None:
        """Account for a newly stored message; the conversation after, or None if already applied.

        The last message and status follow the newest message by Instagram's time (a late
        redelivery of an old message does not push it to the top); a customer message adds one
        unread and asks for a reply; an outbound one answers and clears the unread count (the
        business has seen the thread).

        The decision is one update, guarded by the message id so that it applies once; every
        "is this the newest message" choice is made inside it (an update pipeline), so there
        is nothing to retry. It also writes ``last_apply``: a token of this call and the status
        the conversation had just before. The conversation read back afterwards (batched with
        concurrent messages, :class:`models.group_commit.GroupUpdater`) shows that token when
        nothing else wrote in between, and then ``prev_status`` is exact; when another writer
        came between, ``prev_status`` is taken as ``needs_reply`` — the caller then marks
        earlier customer messages answered, which is idempotent. A late outbound message
        always reports ``needs_reply``: it may still answer customer messages older than it.
        """
        inbound = message["type"] == "customer"
        # A history import's old customer messages were read long ago: they add no unread.
        history = message.get("imported") == "backfill"
        mid = message["_id"]
        token = ObjectId()
        rev = ObjectId()
        newest = {"$lte": ["$last_message_at", lit(message["sent_at"])]}

        def if_newest(value: Any, name: str) -> dict[str, Any]:
            return {"$cond": [newest, value, f"${name}"]}

        sets: dict[str, Any] = {
            "last_apply": {
                "token": lit(token),
                "prev_status": "$status" if inbound else {"$cond": [newest, "$status", lit(STATUS_NEEDS_REPLY)]},
            },
            "last_message": if_newest(lit(message_summary(message)), "last_message"),
            "last_message_at": if_newest(lit(message["sent_at"]), "last_message_at"),
            "status": if_newest(lit(STATUS_NEEDS_REPLY if inbound else STATUS_ANSWERED), "status"),
            "unread_count": (
                {"$add": [{"$ifNull": ["$unread_count", 0]}, 0 if history else 1]}
                if inbound
                else if_newest(0, "unread_count")
            ),
            "updated_at": lit(utcnow()),
            "rev": lit(rev),
            "recent_message_ids": {
                "$slice": [{"$concatArrays": [{"$ifNull": ["$recent_message_ids", []]}, [lit(mid)]]}, -RECENT_IDS_KEPT]
            },
        }
        if inbound:
            # Meta's messaging window runs from the customer's latest message (by Instagram's
            # time: a late redelivery of an older one does not move it back).
            sets["last_customer_message_at"] = {"$max": ["$last_customer_message_at", lit(message["sent_at"])]}
        known = self._known.get(conversation_id)
        outcome = await self._updater.update(
            GroupUpdate(
                conversation_id,
                {"_id": conversation_id, "channel_id": message["channel_id"], "recent_message_ids": {"$ne": mid}},
                [{"$set": sets}],
                is_mine=lambda doc: (doc.get("last_apply") or {}).get("token") == token,
                scope={"channel_id": message["channel_id"]},
                shortcut=None if known is None else applied_to_known(known, message, token=token, rev=rev),
            )
        )
        after = outcome.doc
        if after is None or not outcome.applied:
            return None  # gone, or applied before (a redelivery)
        self._remember(after)
        after = dict(after)
        after["prev_status"] = after["last_apply"]["prev_status"] if outcome.own_mark else STATUS_NEEDS_REPLY
        return after

    def known_apply(self, conversation_id: ObjectId, message: dict[str, Any]) -> Shortcut | None:
        """:meth:`apply_message`'s read-free shortcut alone, for the remembered state (None:
        none remembered) — to be sent with the message's own insert, as an update from
        :meth:`as_update`; its outcome goes to :meth:`after_known_apply`."""
        known = self._known.get(conversation_id)
        if known is None:
            return None
        return applied_to_known(known, message, token=ObjectId(), rev=ObjectId())

    def remembered_with(self, conversation_id: ObjectId, message_id: ObjectId) -> dict[str, Any] | None:
        """The remembered state of the conversation when it lists ``message_id`` among its
        recent messages (a copy), else None. Such a state proves the message was applied — ids
        leave the list only as later ones push them out — so a redelivery's "was it applied?"
        needs no read (:meth:`server.ingest.recorder.MessageRecorder.complete`)."""
        known = self._known.get(conversation_id)
        if known is None or message_id not in (known.get("recent_message_ids") or []):
            return None
        return copy_tree(known)

    def as_update(self, shortcut: Shortcut) -> UpdateOne:
        """``shortcut`` as an operation of a client ``bulkWrite``."""
        return UpdateOne(shortcut.query, shortcut.update, namespace=self.coll.full_name)

    def after_known_apply(self, shortcut: Shortcut, applied: bool | None) -> dict[str, Any] | None:
        """What :meth:`apply_message` returns, when ``shortcut`` was sent and applied; else None
        (the caller applies the message itself). A shortcut that missed means the remembered
        state is stale: it is forgotten, so that apply sends no second shortcut bound to miss."""
        if not applied:
            if applied is False:
                self._known.pop(shortcut.query["_id"], None)
            return None
        self._remember(shortcut.after)
        return {**shortcut.after, "prev_status": shortcut.after["last_apply"]["prev_status"]}

    def _remember(self, doc: dict[str, Any]) -> None:
        """Keep ``doc`` as the latest seen state of its conversation (a state without ``rev``,
        written before revisions, cannot be told current and is not kept)."""
        if doc.get("rev") is None or not self._known_states:
            self._known.pop(doc["_id"], None)
            return
        # A copy: callers may change the document they were given.
        self._known[doc["_id"]] = copy_tree(doc)
        self._known.move_to_end(doc["_id"])
        if len(self._known) > self._known_states:
            self._known.popitem(last=False)

    async def touch(
        self, conversation_id: ObjectId, fields: dict[str, Any] | None = None, channel_id: ObjectId | None = None
    ) -> dict[str, Any] | None:
        """Set fields on a conversation and stamp it (:func:`stamp`); the updated document."""
        return await update_get(
            self.coll,
            in_channel({"_id": conversation_id}, channel_id),
            {"$set": {**(fields or {}), **stamp()}},
        )

    async def refresh_customer(self, channel_id: ObjectId, customer: dict[str, Any]) -> dict[str, Any] | None:
        """Copy the customer's current profile into the conversation; the updated document."""
        key = {"channel_id": channel_id, "customer_id": customer["_id"]}
        update = {"$set": {"customer": customer_snapshot(customer), **stamp()}}
        return await update_get(self.coll, key, update, key=key)

    async def refresh_last_message(
        self, conversation_id: ObjectId, message: dict[str, Any], *, replacing: ObjectId | None = None
    ) -> dict[str, Any] | None:
        """Rewrite the summary when the message it shows changed (edit, unsend, adoption) — or,
        with ``replacing``, when the message it shows was merged into ``message``."""
        shown = replacing if replacing is not None else message["_id"]
        return await update_get(
            self.coll,
            {"_id": conversation_id, "channel_id": message["channel_id"], "last_message.id": shown},
            {"$set": {"last_message": message_summary(message), **stamp()}},
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
            self.coll,
            {"_id": conversation_id, "channel_id": message["channel_id"]},
            guard,
            {"last_message": lit(summary), **{k: lit(v) for k, v in stamp().items()}},
        )
        return outcome.doc if outcome.applied else None

    async def mark_read(self, conversation_id: ObjectId, channel_id: ObjectId | None = None) -> dict[str, Any] | None:
        """Set the unread count to zero; the updated conversation."""
        return await self.touch(conversation_id, {"unread_count": 0}, channel_id)

    async def page(
        self,
        channel_ids: list[ObjectId],
        *,
        limit: int,
        updated_since: dt.datetime | None = None,
        before: tuple[dt.datetime, ObjectId] | None = None,
    ) -> tuple[list[dict[str, Any]], bool]:
        """Most recently updated first, and whether more rows follow.

        ``before`` is the (updated_at, _id) of the last row already seen. The query uses one
        plain range on ``updated_at`` (a top-level ``$or`` for the tie-break would defeat the
        index on the embedded server); rows tied with the cursor's time are skipped here.
        """
        query: dict[str, Any] = {"channel_id": {"$in": channel_ids}}
        time_range: dict[str, Any] = {}
        if updated_since is not None:
            time_range["$gte"] = updated_since
        if before is not None:
            time_range["$lte"] = before[0]
        if time_range:
            query["updated_at"] = time_range
        slack = _TIE_SLACK if before is not None else 0
        fetch = limit + 1 + slack
        cursor = self.coll.find(query).sort([("updated_at", DESCENDING), ("_id", DESCENDING)]).limit(fetch)
        raw = await cursor.to_list(None)
        rows = raw
        if before is not None:
            at, oid = before
            rows = [r for r in raw if r["updated_at"] < at or r["_id"] < oid]
        has_more = len(rows) > limit or len(raw) == fetch
        return rows[:limit], has_more
