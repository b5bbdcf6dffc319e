"""Deleting documents past their TTL index, for a store whose own TTL monitor is off.

MongoDB expires documents itself (its TTL monitor walks each TTL index once a minute), and in
production igsync leaves it at that. The embedded SecantusDB has a sweeper too, but it decodes
*every* document of every collection that has a TTL index, under the lock every command
takes: a stall each minute that grows with the data (the audit log alone gains a document per
webhook) — the growing latency tail of the soak (docs/performance.md, "Soak"). Its sweeper cannot
be turned off from its command line (SecantusDB 0.7.0b3 reads ``ttl_sweep_seconds`` from its
config but does not pass it on), and it finds nothing to do in a collection without a TTL
index. So when igsync expires documents itself (``IGSYNC_EXPIRY_SWEEP_SECS`` > 0, as
``igsync serve`` sets it for its embedded store), each repository's TTL index is created as a
plain index on the same field (:class:`TtlIndexes`), and igsync deletes what has expired
the way MongoDB's monitor does: through that index, reading only what has expired, in short
commands. Against MongoDB (the default, 0) the indexes are real TTL indexes and the store
expires documents itself.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from pymongo import ASCENDING
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase

from models.indexes import drop_superseded

# Documents deleted per command: a command holds the embedded store briefly, and a backlog
# (a sweep after a long stop) goes in several of them instead of one long one. Each document
# costs the embedded store about 1 ms under load (its index entries): 100 a command held every
# webhook for 80-115 ms in the 30-minute soak, 20 holds them about 20 ms.
EXPIRY_BATCH = 20


@dataclass(frozen=True)
class TtlIndex:
    """One TTL index: documents of ``collection`` whose ``field`` holds a date before
    now − ``expire_after_secs`` (and that match ``partial``, when the index is partial) expire."""

    collection: str
    field: str
    expire_after_secs: float
    partial: dict[str, Any] | None = None

    def cutoff(self, now: dt.datetime) -> dict[str, Any]:
        """Documents whose field holds a date before now − the TTL (a range on the indexed field;
        only dates compare to a date, as MongoDB's monitor expires only dates)."""
        return {self.field: {"$lt": now - dt.timedelta(seconds=self.expire_after_secs)}}

    def expired(self, now: dt.datetime) -> dict[str, Any]:
        """The filter of this index's expired documents at ``now`` (its partial filter too),
        flat when it can be: the embedded store plans an ``$and`` as a collection scan."""
        flat = self.cutoff(now)
        for key, condition in (self.partial or {}).items():
            if key not in flat:
                flat[key] = condition
            elif isinstance(condition, dict) and all(op.startswith("$") for op in condition):
                flat[key] = {**condition, **flat[key]}
            else:
                return {"$and": [self.cutoff(now), self.partial]}
        return flat


# The name of a TTL index's plain twin, when igsync expires its documents itself.
BY_IGSYNC_SUFFIX = "_by_igsync"


class TtlIndexes:
    """The TTL indexes the repositories declare, created either as TTL indexes (the store
    expires; ``by_igsync`` False) or as plain indexes that igsync's sweep reads (True).

    The two forms have different names, and each drops the other when it is created: an index
    on the same key with other options is refused, and a TTL index left behind would bring the
    embedded store's sweep back."""

    def __init__(self, *, by_igsync: bool = False) -> None:
        self.by_igsync = by_igsync
        self.declared: list[TtlIndex] = []

    def declare(
        self, collection: str, field: str, expire_after_secs: float, partial: dict[str, Any] | None = None
    ) -> TtlIndex:
        """A repository's TTL index (in its constructor); igsync's sweep knows it from here on."""
        index = TtlIndex(collection, field, float(expire_after_secs), partial)
        self.declared.append(index)
        return index

    async def ensure(self, coll: AsyncCollection, index: TtlIndex, *, name: str) -> None:
        """Create ``index`` in the form this process uses (idempotent)."""
        options: dict[str, Any] = {"partialFilterExpression": index.partial} if index.partial else {}
        keys = [(index.field, ASCENDING)]
        # The other form goes first: the store refuses a second index on the same key with
        # other options (and neither form is unique, so nothing is unguarded meanwhile).
        if self.by_igsync:
            await drop_superseded(coll, [name])
            await coll.create_index(keys, name=name + BY_IGSYNC_SUFFIX, **options)
        else:
            await drop_superseded(coll, [name + BY_IGSYNC_SUFFIX])
            await coll.create_index(keys, name=name, expireAfterSeconds=index.expire_after_secs, **options)


class ExpiredDocuments:
    """Deletes what the repositories' declared TTL indexes say has expired (their plain twins,
    when igsync expires)."""

    def __init__(self, db: AsyncDatabase, declared: TtlIndexes, *, batch: int = EXPIRY_BATCH) -> None:
        self.db = db
        self.declared = declared
        self.batch = batch

    async def ttl_indexes(self) -> list[TtlIndex]:
        """The declared TTL indexes."""
        return list(self.declared.declared)

    async def delete_expired(self, now: dt.datetime) -> dict[str, int]:
        """Delete every expired document; how many, per collection (only those with any)."""
        deleted: dict[str, int] = {}
        for index in await self.ttl_indexes():
            count = await self._delete(index, now)
            if count:
                deleted[index.collection] = deleted.get(index.collection, 0) + count
        return deleted

    async def expired_ids(self, index: TtlIndex, now: dt.datetime) -> list[Any]:
        """Up to ``batch`` ids of expired documents. No sort: the embedded store sorts every
        match before a limit; the index range alone is enough, and every one of them goes."""
        rows = await self.db[index.collection].find(index.expired(now), {"_id": 1}).limit(self.batch).to_list(None)
        return [row["_id"] for row in rows]

    async def _delete(self, index: TtlIndex, now: dt.datetime) -> int:
        coll = self.db[index.collection]
        total = 0
        while True:
            ids = await self.expired_ids(index, now)
            if not ids:
                return total
            # The date again: a document whose date moved on since the read (a lease renewed, an
            # expiry pushed back) is not expired any more and stays. One flat filter, ``_id``
            # first: the embedded store plans an ``$and`` (or another field first) as a scan of
            # the collection — 0.5 s a command in the soak.
            result = await coll.delete_many({"_id": {"$in": ids}, **index.cutoff(now)})
            total += result.deleted_count
            if len(ids) < self.batch:
                return total
