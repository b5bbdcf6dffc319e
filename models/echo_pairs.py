"""The ``echo_pairs`` collection: which outbound send each echo belongs to, decided in one document.

One document per ``(conversation, content hash)`` lists the recent *sends* (mark-sent calls)
and *echoes* (owner messages from the webhook) of that text in that conversation, and which
echo is paired with which send. Both sides register themselves in this one document, so
across processes exactly one of them sees the other: whoever registers second finds the
first and pairs with it.

The document is only changed by compare-and-swap on ``version``: read it, compute the new
state in Python (the pure functions of :mod:`server.dedup.echo`), then
``update_one({_id, version: v}, {$set: state, $inc: {version: 1}})``; a writer that lost
the race reads again and recomputes. A missing document is created with ``insert_one``
(a concurrent creator gets ``DuplicateKeyError`` on ``_id`` and retries as an updater), so
the SecantusDB upsert quirk (``None`` answers) never comes into play. A caller that expects
no document yet sends the creating insert itself, ahead of its next write
(:meth:`EchoPairRepository.creation`), and decides with ``transact`` only when it is refused.

Under load the read and the creating insert of concurrent pairings share commands with each
other (:mod:`models.group_commit`); that changes nothing above — a batched read is still one
snapshot taken after the caller asked, and a batched insert still fails on a taken ``_id``.

Entries older than the dedup window are pruned by the decision functions; a TTL index on
``expires_at`` removes documents idle for longer than that.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any, TypeVar

from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError, PyMongoError

from models.expiry import TtlIndexes
from models.group_commit import GroupFinder, GroupInserter, LeadInsert

T = TypeVar("T")

# Each retry means another writer just changed the document; a (conversation, text) sees
# a handful of concurrent writers at most (a send, its echo and a few redeliveries).
MAX_CAS_ATTEMPTS = 64


class EchoPairContention(PyMongoError):
    """The pairing document kept changing under us: answer 503 so the caller retries."""


# (current document or None) -> (new state fields or None when unchanged, result)
Decision = Callable[[dict[str, Any] | None], tuple[dict[str, Any] | None, T]]


class EchoPairRepository:
    def __init__(self, db: AsyncDatabase, *, ttl: TtlIndexes | None = None) -> None:
        self.coll = db["echo_pairs"]
        self._ttl = ttl or TtlIndexes()
        self._expiry = self._ttl.declare("echo_pairs", "expires_at", 0)
        self._reader = GroupFinder(self.coll, "_id")
        self._inserter = GroupInserter(self.coll)

    async def ensure_indexes(self) -> None:
        """Create the collection's indexes (idempotent)."""
        await self._ttl.ensure(self.coll, self._expiry, name="expires_at_ttl")

    async def get(self, key: str) -> dict[str, Any] | None:
        """A pairing document by its key."""
        return await self.coll.find_one({"_id": key})

    def creation(self, key: str, state: dict[str, Any], *, expires_at: dt.datetime) -> LeadInsert:
        """The insert that creates document ``key`` with ``state`` — as :meth:`transact` does on
        a missing document — for a caller that sends it ahead of another write (an echo's
        message: :meth:`models.group_commit.GroupInserter.insert`). Refused on ``_id`` when the
        document exists: the caller then decides with :meth:`transact`."""
        return LeadInsert(self.coll, {"_id": key, "version": 1, **state, "expires_at": expires_at})

    async def transact(self, key: str, decide: Decision[T], *, expires_at: dt.datetime) -> T:
        """Apply ``decide`` to the document ``key`` atomically (compare-and-swap); its result."""
        for _ in range(MAX_CAS_ATTEMPTS):
            found = await self._reader.find([key])
            current = found[0] if found else None
            state, result = decide(current)
            if state is None:
                # Nothing to change (an idempotent repeat): the read was one consistent snapshot.
                return result
            if current is None:
                try:
                    await self._inserter.insert(self.creation(key, state, expires_at=expires_at).doc)
                except DuplicateKeyError:
                    continue
                return result
            outcome = await self.coll.update_one(
                {"_id": key, "version": current["version"]},
                {"$set": {**state, "expires_at": expires_at}, "$inc": {"version": 1}},
            )
            if outcome.matched_count == 1:
                return result
        raise EchoPairContention(f"echo pairing document {key} kept changing; retry")
