"""Deleting documents past their TTL index, for a store whose own TTL monitor is off.

MongoDB expires documents itself (its TTL monitor walks each TTL index once a minute), and in
production igsync leaves it at that. The embedded SecantusDB has a sweeper too, but it decodes
*every* document of every collection that has a TTL index, under the lock every command
takes: a stall each minute that grows with the data (the audit log alone gains a document per
webhook) — the growing latency tail of the soak (docs/performance.md, "Soak"). So igsync starts
the embedded server with that sweeper off and expires documents itself, the way MongoDB's
monitor does: through each TTL index, reading only what has expired, in short commands.

What expires is read from the indexes themselves (``expireAfterSeconds``, the one field, a
partial filter), so a repository that declares a TTL index needs nothing here.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase

# Documents deleted per command: a command holds the embedded store briefly, and a backlog
# (a sweep after a long stop) goes in several of them instead of one long one.
EXPIRY_BATCH = 100


@dataclass(frozen=True)
class TtlIndex:
    """One TTL index: documents of ``collection`` whose ``field`` holds a date before
    now − ``expire_after_secs`` (and that match ``partial``, when the index is partial) expire."""

    collection: str
    field: str
    expire_after_secs: float
    partial: dict[str, Any] | None = None

    def expired(self, now: dt.datetime) -> dict[str, Any]:
        """The filter of this index's expired documents at ``now`` (a range on its field, so the
        index answers it; only dates compare to a date, as MongoDB's monitor expires only dates)."""
        cutoff = {self.field: {"$lt": now - dt.timedelta(seconds=self.expire_after_secs)}}
        return {"$and": [cutoff, self.partial]} if self.partial else cutoff


def ttl_index_of(collection: str, spec: dict[str, Any]) -> TtlIndex | None:
    """The TTL index an index description (``list_indexes``) declares, or None — as mongod
    reads it: one ascending or descending field other than ``_id``, a non-negative number."""
    ttl = spec.get("expireAfterSeconds")
    if isinstance(ttl, bool) or not isinstance(ttl, int | float) or ttl != ttl or ttl < 0:
        return None
    keys = list((spec.get("key") or {}).items())
    if len(keys) != 1:
        return None
    field, direction = keys[0]
    if field == "_id" or isinstance(direction, bool) or not isinstance(direction, int | float):
        return None
    partial = spec.get("partialFilterExpression")
    return TtlIndex(collection, field, float(ttl), dict(partial) if partial else None)


class ExpiredDocuments:
    """Finds the TTL indexes of one database and deletes what they say has expired."""

    def __init__(self, db: AsyncDatabase, *, batch: int = EXPIRY_BATCH) -> None:
        self.db = db
        self.batch = batch

    async def ttl_indexes(self) -> list[TtlIndex]:
        """Every TTL index of the database, read from the store (a few small commands)."""
        found: list[TtlIndex] = []
        for name in sorted(await self.db.list_collection_names()):
            if name.startswith("system."):
                continue
            async for spec in await self.db[name].list_indexes():
                index = ttl_index_of(name, dict(spec))
                if index is not None:
                    found.append(index)
        return found

    async def delete_expired(self, now: dt.datetime) -> dict[str, int]:
        """Delete every expired document; how many, per collection (only those with any)."""
        deleted: dict[str, int] = {}
        for index in await self.ttl_indexes():
            count = await self._delete(index, now)
            if count:
                deleted[index.collection] = deleted.get(index.collection, 0) + count
        return deleted

    async def _delete(self, index: TtlIndex, now: dt.datetime) -> int:
        coll = self.db[index.collection]
        expired = index.expired(now)
        total = 0
        while True:
            # No sort: the embedded store sorts every match before a limit; the index range
            # alone is enough to take some expired documents, and every one of them goes.
            rows = await coll.find(expired, {"_id": 1}).limit(self.batch).to_list(None)
            if not rows:
                return total
            # The filter again: a document whose date moved on since the read (a lease renewed,
            # an expiry pushed back) is not expired any more and stays.
            result = await coll.delete_many({"$and": [{"_id": {"$in": [row["_id"] for row in rows]}}, expired]})
            total += result.deleted_count
            if len(rows) < self.batch:
                return total
