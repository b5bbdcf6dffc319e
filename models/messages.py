"""The ``messages`` collection: every message of every conversation, stored once.

Uniqueness is the database's job, with three unique indexes, each starting with
``channel_id`` — the collection's shard key (:mod:`models.sharding`): MongoDB enforces a unique
index on a sharded collection only when it starts with the shard key. Every look-up by one of
these keys names its channel too, so it is routed to one shard and the embedded server plans
it on the index (it plans a compound index only when the query names its first field):

* ``(channel_id, mid_keys)`` — unique, multikey: ``"<channel_id>:<mid>"`` for every Instagram message id
  the message is known by (its own ``mid``, the Send API ids given to mark-sent, the mid of an
  echo it absorbed). A redelivered mid, or the echo of a mid given to mark-sent, can never be
  inserted a second time, in any process: the insert itself fails with ``DuplicateKeyError``.
  Qualified by channel because the same mid legitimately reaches two connected accounts that
  message each other. A message with no Instagram id yet gets a local key, so that every
  document has at least one (an empty array would collide in a unique index).
* ``(channel_id, client_key)`` — unique where ``client_key`` exists:
  ``"<conversation_id>:<client_message_id>"``, mark-sent's idempotency key.
* ``(channel_id, pair_key)`` — unique where ``pair_key`` exists: ``"<conversation_id>:<send_id>"``,
  one message per send: a
  mark-sent and the echo paired with it (see :mod:`models.echo_pairs`) both insert with the
  send's ``send_id``, so the second of them collides and merges into the first instead of
  storing a second message.

A message merged into another one (the extra echo of a multi-mid send that arrived before its
mark-sent) stays as a hidden tombstone with ``merged_into`` set: it keeps its mid keys, so a
redelivery of that echo still collides, and listings skip it.

``mids`` keeps the raw Instagram ids for people and the API; the repository derives the keys
from it (and ``pair_key`` from ``send_id``) on every write, so callers never build them.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from bson import ObjectId
from pymongo import ASCENDING, DESCENDING, UpdateMany, UpdateOne
from pymongo.asynchronous.database import AsyncDatabase

from models.atomic import update_get
from models.group_commit import GroupFinder, GroupInserter, GroupManyUpdater, Guard, Inserted, LeadInsert
from models.indexes import drop_superseded
from models.sharding import in_channel
from models.timeutil import aware

TYPE_CUSTOMER = "customer"
TYPE_SUPPORT = "support"
TYPE_AI = "AI"
OUTBOUND_TYPES = (TYPE_SUPPORT, TYPE_AI)
# An owner message first seen as an echo from the Instagram app (not sent through igsync);
# only such a message may be adopted by a mark-sent.
SOURCE_INSTAGRAM_DIRECT = "instagram_direct"
# The stored-duplicates check reads its range a slice at a time (one short command each): the
# first slice this many seconds, the next ones sized to hold about DUPLICATES_SLICE_ROWS rows.
DUPLICATES_SLICE_SECS = 10
DUPLICATES_SLICE_ROWS = 500
# ``imported``: a message read from the Conversations API instead of a webhook. A history
# import's messages are old: no notifications, no unread count, no workflow triggers. A gap
# repair's were missed during an outage: new to the business, announced like a webhook's.
IMPORTED_BACKFILL = "backfill"
IMPORTED_REPAIR = "repair"
# Rows sharing the anchor's millisecond that a page can step over (see ``page``).
_TIE_SLACK = 20


def mid_key(channel_id: ObjectId, mid: str) -> str:
    """The unique key of one mid on one channel (``mid_keys``)."""
    return f"{channel_id}:{mid}"


def client_key(conversation_id: ObjectId, client_message_id: str) -> str:
    """The unique key of a sender's idempotency id in one conversation."""
    return f"{conversation_id}:{client_message_id}"


def pair_key(conversation_id: ObjectId, send_id: str) -> str:
    """The unique key that binds an echo to the send it pairs with."""
    return f"{conversation_id}:{send_id}"


def with_keys(doc: dict[str, Any]) -> dict[str, Any]:
    """Fill ``mid_keys``, ``client_key`` and ``pair_key`` from ``mids``, ``client_message_id``
    and ``send_id``."""
    mids = [m for m in doc.get("mids") or [] if m]
    keys = [mid_key(doc["channel_id"], m) for m in mids]
    doc["mid_keys"] = keys or [mid_key(doc["channel_id"], f"local:{doc['_id']}")]
    if doc.get("client_message_id"):
        doc["client_key"] = client_key(doc["conversation_id"], doc["client_message_id"])
    if doc.get("send_id"):
        doc["pair_key"] = pair_key(doc["conversation_id"], doc["send_id"])
    return doc


_KEY_INDEXES = {
    "channel_mid_keys_unique": "mid_keys",
    "channel_client_key_unique": "client_key",
    "channel_pair_key_unique": "pair_key",
}
# The single-field unique indexes of earlier versions: a sharded cluster refuses them (they do
# not start with the shard key). Dropped once their channel-prefixed successors exist.
_SUPERSEDED_INDEXES = ("mid_keys_unique", "client_key_unique", "pair_key_unique", "conversation_time",
                       "conversation_unanswered")  # fmt: skip


def conflict_key(exc: Exception) -> str | None:
    """Which unique key a ``DuplicateKeyError`` was raised by: ``mid_keys``, ``client_key``,
    ``pair_key`` (or ``_id``). From the server's ``keyPattern``, else the index *name* in the
    message — never a substring of the key's value, which can hold a caller's id."""
    details = getattr(exc, "details", None) or {}
    pattern = [field for field in details.get("keyPattern") or {} if field != "channel_id"]
    if pattern:
        return pattern[0]
    text = str(details.get("errmsg", exc))
    for index, key in _KEY_INDEXES.items():
        if f"index: {index}" in text:
            return key
    return "_id" if "index: _id_" in text else None


def is_mid_conflict(exc: Exception) -> bool:
    """Whether a ``DuplicateKeyError`` was raised by the mid index (not the client key)."""
    return conflict_key(exc) == "mid_keys"


class MessageRepository:
    def __init__(self, db: AsyncDatabase) -> None:
        self.coll = db["messages"]
        self._inserter = GroupInserter(self.coll)
        self._answering = GroupManyUpdater(self.coll)
        self._by_mid = GroupFinder(self.coll, "mid_keys", scope_field="channel_id")

    async def ensure_indexes(self) -> None:
        """Create the unique and query indexes of messages (idempotent)."""
        for field, name in ((f, n) for n, f in _KEY_INDEXES.items()):
            only_present = {} if field == "mid_keys" else {"partialFilterExpression": {field: {"$exists": True}}}
            await self.coll.create_index([("channel_id", ASCENDING), (field, ASCENDING)], unique=True, name=name,
                                         **only_present)  # fmt: skip
        await self.coll.create_index(
            [("channel_id", ASCENDING), ("conversation_id", ASCENDING), ("sent_at", ASCENDING), ("_id", ASCENDING)],
            name="channel_conversation_time",
        )
        # mark_answered's filter, all of it: the embedded store plans an index only when every
        # predicate is one of its fields. Without this one every owner reply read every earlier
        # message of its conversation (130 ms at 3 000 messages; 0.8 ms with it, flat —
        # bench/store_access.py).
        await self.coll.create_index(
            [
                ("channel_id", ASCENDING),
                ("conversation_id", ASCENDING),
                ("is_answered", ASCENDING),
                ("sent_at", ASCENDING),
            ],
            name="channel_conversation_unanswered",
        )
        # The stored-duplicates audit (igsync_duplicates_stored) reads the last hour's messages by
        # this range; without it the embedded store scans the collection (bench/ops_monitor.py).
        await self.coll.create_index([("created_at", ASCENDING)], name="created_at")
        await drop_superseded(self.coll, _SUPERSEDED_INDEXES)

    def use_client_bulk_write(self, on: bool) -> None:
        """Whether a lone insert goes with its probe, lead and follower in one client bulkWrite
        (``models.store.Store.adapt_to_server``); else each is its own command."""
        self._inserter.client_bulk_write = on

    @property
    def sends_followers(self) -> bool:
        """Whether :meth:`insert_then` may send a follower with the insert (else it never does,
        and building one is wasted work)."""
        return self._inserter.client_bulk_write

    async def insert(
        self, doc: dict[str, Any], *, probe: UpdateOne | None = None, lead: LeadInsert | None = None
    ) -> bool | None:
        """Insert (group-committed with concurrent inserts); ``DuplicateKeyError`` propagates —
        it *is* the dedup decision. With ``probe``: whether it matched, asked right after the
        insert in the same command when the insert goes alone, else None; ``lead``: inserted
        first, the message only if it succeeds (:meth:`models.group_commit.GroupInserter.insert`)."""
        inserted = await self.insert_then(doc, probe=probe, lead=lead)
        return inserted.probe_matched

    async def insert_then(
        self,
        doc: dict[str, Any],
        *,
        probe: UpdateOne | None = None,
        lead: LeadInsert | None = None,
        follower: UpdateOne | None = None,
        trailer: UpdateMany | None = None,
    ) -> Inserted:
        """:meth:`insert`, with ``follower`` (an update of another collection) in the same
        command when it can go: it runs only when the insert succeeded and the probe did not
        match (:meth:`models.group_commit.GroupInserter.insert_then`)."""
        return await self._inserter.insert_then(with_keys(doc), probe, lead, follower, trailer)

    async def get(self, message_id: ObjectId, channel_id: ObjectId | None = None) -> dict[str, Any] | None:
        """A message by id (routed to its shard when the channel is given)."""
        return await self.coll.find_one(in_channel({"_id": message_id}, channel_id))

    async def get_many(self, message_ids: list[ObjectId]) -> dict[ObjectId, dict[str, Any]]:
        """Several messages by id in one round trip (trigger delivery reads a batch)."""
        docs = await self.coll.find({"_id": {"$in": message_ids}}).to_list(None)
        return {d["_id"]: d for d in docs}

    async def find_by_mid(self, channel_id: ObjectId, mid: str) -> dict[str, Any] | None:
        """The message known by this Instagram id; concurrent look-ups share one query."""
        found = await self._by_mid.find([mid_key(channel_id, mid)], scope=channel_id)
        return found[0] if found else None

    def mid_guard(self, channel_id: ObjectId, mid: str) -> Guard:
        """ "No message of the channel holds ``mid`` yet", for a lead written before a message
        (the echo's pairing claim: not made for a message already stored)."""

        async def matched() -> bool:
            return await self.find_by_mid(channel_id, mid) is not None

        return Guard(self.coll, {"channel_id": channel_id, "mid_keys": mid_key(channel_id, mid)}, matched)

    async def stored_mids(self, channel_id: ObjectId, mids: list[str]) -> set[str]:
        """Which of ``mids`` a message of the channel already holds (one query on the unique index)."""
        if not mids:
            return set()
        keys = [mid_key(channel_id, m) for m in mids]
        docs = await self.coll.find({"channel_id": channel_id, "mid_keys": {"$in": keys}}, {"mids": 1}).to_list(None)
        held = {m for d in docs for m in d.get("mids") or []}
        return held & set(mids)

    async def unechoed_near(
        self, channel_id: ObjectId, conversation_id: ObjectId, content_hash: str, at: dt.datetime, window_secs: float
    ) -> list[dict[str, Any]]:
        """Outbound messages of the conversation with this text, sent within ``window_secs`` of
        ``at``, still without an Instagram id: sends whose echo never came (on the time index)."""
        span = dt.timedelta(seconds=window_secs)
        query = {
            "channel_id": channel_id,
            "conversation_id": conversation_id,
            "sent_at": {"$gte": at - span, "$lte": at + span},
        }
        docs = await self.coll.find(query).to_list(None)
        return [
            d
            for d in docs
            if d.get("type") != TYPE_CUSTOMER
            and d.get("content_hash") == content_hash
            and not d.get("mids")
            and "merged_into" not in d
        ]

    async def latest_of_type(
        self, channel_id: ObjectId, conversation_id: ObjectId, message_type: str
    ) -> dict[str, Any] | None:
        """A conversation's latest message of ``type`` (``customer``: when the customer last wrote).
        Walks the conversation's time index backwards; a type absent from a long thread reads it all,
        so this is only the fallback for conversations stored before they kept the time."""
        cursor = self.coll.find(
            {"channel_id": channel_id, "conversation_id": conversation_id}, {"type": 1, "sent_at": 1}
        )
        async for row in cursor.sort([("sent_at", DESCENDING), ("_id", DESCENDING)]):
            if row.get("type") == message_type:
                return row
        return None

    async def native_since(
        self, channel_id: ObjectId, conversation_id: ObjectId, since: dt.datetime, message_type: str
    ) -> dict[str, Any] | None:
        """The oldest Instagram-app message of ``message_type`` sent since ``since`` that no
        other message stands for (the echo of an attachment whose sender died before it knew
        the attachment's mid). On the conversation's time index; the rest is read in Python."""
        query = {"channel_id": channel_id, "conversation_id": conversation_id, "sent_at": {"$gte": since}}
        async for row in self.coll.find(query).sort([("sent_at", ASCENDING), ("_id", ASCENDING)]).limit(200):
            if (
                row.get("source") == SOURCE_INSTAGRAM_DIRECT
                and "merged_into" not in row
                and row.get("message_type") == message_type
            ):
                return row
        return None

    async def recent_in_conversation(
        self, channel_id: ObjectId, conversation_id: ObjectId, since: dt.datetime, limit: int = 200
    ) -> list[dict[str, Any]]:
        """A conversation's messages sent since ``since``, oldest first (its time index)."""
        query = {"channel_id": channel_id, "conversation_id": conversation_id, "sent_at": {"$gte": since}}
        return await self.coll.find(query).sort([("sent_at", ASCENDING), ("_id", ASCENDING)]).limit(limit).to_list(None)

    async def find_by_client_message_id(
        self, channel_id: ObjectId, conversation_id: ObjectId, client_message_id: str
    ) -> dict[str, Any] | None:
        """The message a sender recorded under ``client_message_id``, if any."""
        return await self.coll.find_one(
            {"channel_id": channel_id, "client_key": client_key(conversation_id, client_message_id)}
        )

    async def add_mids(self, message: dict[str, Any], mids: list[str]) -> dict[str, Any] | None:
        """Record more Instagram ids on a message (an absorbed echo, Send API ids); the message after.

        Raises ``DuplicateKeyError`` when one of them already belongs to another message."""
        keys = [mid_key(message["channel_id"], m) for m in mids]
        update: dict[str, Any] = {"$addToSet": {"mids": {"$each": mids}, "mid_keys": {"$each": keys}}}
        if not message.get("mid") and mids:
            update["$set"] = {"mid": mids[0]}
        return await update_get(self.coll, {"_id": message["_id"], "channel_id": message["channel_id"]}, update)

    async def release_mid(self, holder: dict[str, Any], mid: str) -> bool:
        """Take ``mid`` off ``holder`` (compare-and-swap on its mids as read): an outbound
        message that got another send's echo by pairing — two sends of one text crossed —
        gives it up to the message Instagram's answer names. False if ``holder`` changed."""
        mids = [m for m in holder.get("mids") or [] if m != mid]
        channel_id = holder["channel_id"]
        keys = [mid_key(channel_id, m) for m in mids] or [mid_key(channel_id, f"local:{holder['_id']}")]
        done = await self.coll.update_one(
            {"_id": holder["_id"], "channel_id": channel_id, "mids": holder.get("mids") or []},
            {"$set": {"mids": mids, "mid_keys": keys, "mid": mids[0] if mids else None}},
        )
        return done.modified_count == 1

    async def find_collisions(
        self, channel_id: ObjectId, conversation_id: ObjectId, mids: list[str], send_id: str
    ) -> list[dict[str, Any]]:
        """The messages an outbound insert with these mids and this send collided with (one
        indexed lookup per key: this runs only after a collision)."""
        found: dict[Any, dict[str, Any]] = {}
        queries = [{"channel_id": channel_id, "pair_key": pair_key(conversation_id, send_id)}]
        queries += [{"channel_id": channel_id, "mid_keys": mid_key(channel_id, m)} for m in mids]
        for query in queries:
            doc = await self.coll.find_one(query)
            if doc is not None:
                found.setdefault(doc["_id"], doc)
        return sorted(found.values(), key=lambda d: d["_id"])

    async def absorb_mid(
        self, channel_id: ObjectId, conversation_id: ObjectId, send_id: str, mid: str
    ) -> dict[str, Any] | None:
        """Record an echo's mid on the message of its send; None if that message does not exist
        yet. ``DuplicateKeyError`` when another message holds the mid."""
        key = {"channel_id": channel_id, "pair_key": pair_key(conversation_id, send_id)}
        new_key = mid_key(channel_id, mid)
        add = [
            {
                "$set": {
                    "mids": {"$cond": [{"$in": [mid, "$mids"]}, "$mids", {"$concatArrays": ["$mids", [mid]]}]},
                    "mid_keys": {
                        "$cond": [
                            {"$in": [new_key, "$mid_keys"]},
                            "$mid_keys",
                            {"$concatArrays": ["$mid_keys", [new_key]]},
                        ]
                    },
                    "mid": {"$ifNull": ["$mid", mid]},
                }
            }
        ]
        return await update_get(self.coll, key, add, key=key)

    async def adopt(
        self, message: dict[str, Any], send_id: str, fields: dict[str, Any], add_mids: list[str]
    ) -> dict[str, Any] | None:
        """Turn a stored Instagram-app message into the outbound message of send ``send_id``.

        One guarded update: it matches only while the message still looks native and is not
        paired with another send, so it happens at most once; None when the guard did not match.
        """
        conversation_id = message["conversation_id"]
        own = pair_key(conversation_id, send_id)
        changes = {**fields, "send_id": send_id, "pair_key": own}
        if fields.get("client_message_id"):
            changes["client_key"] = client_key(conversation_id, fields["client_message_id"])
        update: dict[str, Any] = {"$set": changes}
        if add_mids:
            keys = [mid_key(message["channel_id"], m) for m in add_mids]
            update["$addToSet"] = {"mids": {"$each": add_mids}, "mid_keys": {"$each": keys}}
        guard = {
            "_id": message["_id"],
            "channel_id": message["channel_id"],
            "source": SOURCE_INSTAGRAM_DIRECT,
            "type": TYPE_SUPPORT,
            "merged_into": {"$exists": False},
            # Not paired with another send. ``$in`` with None matches a missing field; a
            # top-level ``$or`` here would make the embedded server scan the collection.
            "pair_key": {"$in": [None, own]},
        }
        return await update_get(self.coll, guard, update)

    async def merge_into(
        self, message_id: ObjectId, primary_id: ObjectId, channel_id: ObjectId | None = None
    ) -> dict[str, Any] | None:
        """Hide a native-looking message that another message now stands for (keeps its keys)."""
        guard = {"_id": message_id, "source": SOURCE_INSTAGRAM_DIRECT, "merged_into": {"$exists": False}}
        guard = in_channel(guard, channel_id)
        return await update_get(self.coll, guard, {"$set": {"merged_into": primary_id}})

    async def mark_answered(self, channel_id: ObjectId, conversation_id: ObjectId, up_to: dt.datetime) -> None:
        """Mark the customer messages sent up to ``up_to`` answered (an owner reply came).

        Every owner message that answers a waiting thread asks this, so concurrent ones share
        one command (:class:`models.group_commit.GroupManyUpdater`); the update is idempotent."""
        query, update = _answered(channel_id, conversation_id, up_to)
        await self._answering.update_many(query, update)

    def answered_update(self, channel_id: ObjectId, conversation_id: ObjectId, up_to: dt.datetime) -> UpdateMany:
        """:meth:`mark_answered` as an operation of a client ``bulkWrite`` (the trailer of an
        owner message's insert, :meth:`insert_then`)."""
        query, update = _answered(channel_id, conversation_id, up_to)
        return UpdateMany(query, update, namespace=self.coll.full_name)

    async def update(
        self,
        message_id: ObjectId,
        update: dict[str, Any],
        query: dict[str, Any] | None = None,
        channel_id: ObjectId | None = None,
    ) -> dict[str, Any] | None:
        """Apply ``update`` to a message (where ``query`` also holds); the updated document."""
        return await update_get(self.coll, in_channel({"_id": message_id, **(query or {})}, channel_id), update)

    async def page(
        self,
        channel_id: ObjectId,
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
        query: dict[str, Any] = {"channel_id": channel_id, "conversation_id": conversation_id}
        if time_range:
            query["sent_at"] = time_range
        forward = after is not None
        direction = ASCENDING if forward else DESCENDING
        slack = _TIE_SLACK if (after is not None or before is not None) else 0
        fetch = limit + 1 + slack
        raw = await self.coll.find(query).sort([("sent_at", direction), ("_id", direction)]).limit(fetch).to_list(None)
        # Merged tombstones (models docstring) are never listed.
        rows = [r for r in raw if _inside(r, after, before) and "merged_into" not in r]
        has_more = len(rows) > limit or len(raw) == fetch
        rows = rows[:limit]
        if not forward:
            rows.reverse()
        return rows, has_more

    async def suspected_duplicates(
        self, since: dt.datetime, until: dt.datetime, last_from: dt.datetime, window_secs: int
    ) -> list[tuple[str, dt.datetime]]:
        """Outbound texts stored twice: in one conversation, the same content as an app/AI
        message *and* as an echo no dedup layer absorbed, within ``window_secs``. Each as
        (a key naming the group, when its latest copy was stored), for the groups among the
        messages created in [``since``, ``until``) whose latest copy is from ``last_from`` on.

        The failure dedup exists to prevent, measured after the fact. It reads only the
        messages of that range (the ``created_at`` index), so a caller that remembers what it
        found reads each message about once. A text the owner really typed in the Instagram
        app right after the AI sent the same one also counts: rare, hence "suspected".

        Read in slices, four fields each, and grouped here: one aggregation over the whole
        range held the embedded store (whose every command takes one lock) for 150–230 ms every
        monitor run, and every webhook in flight waited. A slice is sized by the rows the last
        one held (about ``DUPLICATES_SLICE_ROWS``), not fixed: ten-second slices made a fresh
        process's first run, over an hour without outbound messages, 360 commands (now 6).
        """
        groups: dict[tuple[Any, Any], dict[str, Any]] = {}
        step = dt.timedelta(seconds=DUPLICATES_SLICE_SECS)
        start = since
        while start < until:
            end = min(start + step, until)
            rows = await self.coll.find(
                {
                    "created_at": {"$gte": start, "$lt": end},
                    "type": {"$in": list(OUTBOUND_TYPES)},
                    # A folded echo (dedup's hidden tombstone) is not a stored duplicate.
                    "merged_into": {"$exists": False},
                },
                {"_id": 0, "conversation_id": 1, "content_hash": 1, "source": 1, "created_at": 1},
            ).to_list(None)
            for row in rows:
                key = (row.get("conversation_id"), row.get("content_hash"))
                at = aware(row["created_at"])
                group = groups.setdefault(key, {"sources": set(), "first": at, "last": at, "count": 0})
                group["sources"].add(row.get("source"))
                group["first"], group["last"] = min(group["first"], at), max(group["last"], at)
                group["count"] += 1
            start = end
            step = next_slice(step, len(rows))
        window = dt.timedelta(seconds=window_secs)
        return [
            (f"{conversation}:{content}", group["last"])
            for (conversation, content), group in groups.items()
            if group["count"] > 1
            and SOURCE_INSTAGRAM_DIRECT in group["sources"]
            and group["sources"] - {SOURCE_INSTAGRAM_DIRECT}
            and group["last"] - group["first"] <= window
            and group["last"] >= aware(last_from)
        ]


def _inside(row: dict[str, Any], after: dict[str, Any] | None, before: dict[str, Any] | None) -> bool:
    """Strictly after ``after`` and strictly before ``before`` in (sent_at, _id) order."""
    key = (row["sent_at"], row["_id"])
    if after is not None and key <= (after["sent_at"], after["_id"]):
        return False
    return before is None or key < (before["sent_at"], before["_id"])


def next_slice(step: dt.timedelta, rows: int) -> dt.timedelta:
    """The next slice of the stored-duplicates scan, after one of ``step`` that held ``rows``:
    scaled toward ``DUPLICATES_SLICE_ROWS`` rows, at most 4× longer at a time (a quiet slice
    says little of the next: traffic comes in bursts) and never under a second."""
    target = DUPLICATES_SLICE_ROWS / max(rows, 1)
    return max(step * min(target, 4.0), dt.timedelta(seconds=1))


def _answered(
    channel_id: ObjectId, conversation_id: ObjectId, up_to: dt.datetime
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Customer messages of a conversation sent up to ``up_to`` and still unanswered, marked
    answered. ``is_answered: false`` is only ever stored on customer messages (outbound ones
    are stored answered), so the filter needs no ``type`` — and stays on one index."""
    query = {
        "channel_id": channel_id,
        "conversation_id": conversation_id,
        "is_answered": False,
        "sent_at": {"$lte": up_to},
    }
    return query, {"$set": {"is_answered": True}}
