"""The ``orphan_events`` collection: reactions, edits, unsends and reads about a message we
never stored (older than igsync, or not arrived yet).

Each event is kept once (unique ``key`` built from what Instagram sent, so a redelivery
is not a second row), for ``orphan_events_ttl_days``. When the message arrives later the
pending events are applied to it and marked ``applied_at``.
"""

from __future__ import annotations

from typing import Any

from bson import ObjectId
from pymongo import ASCENDING, UpdateOne
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from models.expiry import TtlIndexes
from models.group_commit import GroupFinder, refused_if_matched
from models.indexes import drop_superseded
from models.timeutil import utcnow


class OrphanEventRepository:
    def __init__(self, db: AsyncDatabase, *, ttl_days: int = 30, ttl: TtlIndexes | None = None) -> None:
        self.coll = db["orphan_events"]
        self._finder = GroupFinder(self.coll, "target_mid", scope_field="channel_id")
        self.ttl_secs = ttl_days * 86400
        self._ttl = ttl or TtlIndexes()
        self._expiry = self._ttl.declare("orphan_events", "received_at", self.ttl_secs)

    async def ensure_indexes(self) -> None:
        """Create the collection's indexes (idempotent)."""
        # Unique per channel (the shard key first, models/sharding.py); the key names its channel anyway.
        await self.coll.create_index(
            [("channel_id", ASCENDING), ("key", ASCENDING)], unique=True, name="channel_key_unique"
        )
        await self.coll.create_index([("channel_id", ASCENDING), ("target_mid", ASCENDING)], name="channel_target")
        await self._ttl.ensure(self.coll, self._expiry, name="received_at_ttl")
        await drop_superseded(self.coll, ["key_unique"])

    async def record(self, doc: dict[str, Any]) -> bool:
        """Keep one orphan event; False when this exact event was kept before."""
        try:
            await self.coll.insert_one({**doc, "received_at": utcnow(), "applied_at": None})
        except DuplicateKeyError:
            return False
        return True

    def arrival_probe(self, channel_id: ObjectId, mids: list[str]) -> UpdateOne | None:
        """An update that matches an event kept for a message known by any of ``mids`` and is
        then refused, writing nothing: sent with the message's insert
        (:meth:`MessageRepository.insert <models.messages.MessageRepository.insert>`), it
        answers "did any event come first" in the insert's own round trip, and its refusal
        stops the rest of that ordered command (the conversation update sent with it runs only
        when no event came first). Same indexed filter as :meth:`pending_for`; applied events
        match too (a false "yes" costs the read, never a decision)."""
        if not mids:
            return None
        wanted = list(dict.fromkeys(mids))
        target = wanted[0] if len(wanted) == 1 else {"$in": wanted}
        return refused_if_matched(self.coll, {"channel_id": channel_id, "target_mid": target})

    async def pending_for(self, channel_id: ObjectId, mids: list[str]) -> list[dict[str, Any]]:
        """Events waiting for a message known by any of ``mids``, oldest first.

        Every stored message asks this, so concurrent messages share one query
        (:class:`models.group_commit.GroupFinder`); the filter holds only the indexed
        ``(channel_id, target_mid)`` — ``applied_at`` is checked here, since a third predicate
        would make the embedded store scan."""
        found = await self._finder.find(list(dict.fromkeys(mids)), channel_id)
        rows = [r for r in found if r.get("applied_at") is None]
        return sorted(rows, key=lambda r: (r["at"], r["_id"]))

    async def mark_applied(self, channel_id: ObjectId, ids: list[ObjectId], message_id: ObjectId) -> None:
        """Mark early events of the channel applied to ``message_id``."""
        now = utcnow()
        for oid in ids:
            await self.coll.update_one(
                {"_id": oid, "channel_id": channel_id}, {"$set": {"applied_at": now, "message_id": message_id}}
            )

    async def mark_applied_key(self, channel_id: ObjectId, key: str, message_id: ObjectId) -> None:
        """Mark one early event of the channel, by key, applied to ``message_id``."""
        await self.coll.update_one(
            {"channel_id": channel_id, "key": key}, {"$set": {"applied_at": utcnow(), "message_id": message_id}}
        )

    async def count(self, channel_id: ObjectId, *, applied: bool | None = None) -> int:
        """How many early events a channel has (applied, pending, or all)."""
        query: dict[str, Any] = {"channel_id": channel_id}
        if applied is not None:
            query["applied_at"] = {"$ne": None} if applied else None
        return await self.coll.count_documents(query)

    async def find(self, channel_id: ObjectId, target_mid: str) -> list[dict[str, Any]]:
        """The early events waiting for one mid."""
        return await self.coll.find({"channel_id": channel_id, "target_mid": target_mid}).to_list(None)
