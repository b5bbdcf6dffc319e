"""Atomic writes the repositories share: get-or-create on a unique index, update-then-read.

Two processes that both see "no customer yet" must end with one customer. That is only
true when the decision is the database's: an insert or upsert against a unique index.

Why not ``findAndModify``: on the embedded SecantusDB (0.7) every ``findAndModify`` scans
the whole collection — its write step re-checks ``{"_id": …, "$and": [query]}``, which no
index serves — so its cost grows with the collection (≈10 ms at 2 000 documents, measured
in ``docs/performance.md``). ``insert``/``update``/``find`` with plain field filters use the
indexes. These helpers are built from those, and stay atomic on any MongoDB: each decision
is one single-document write; the read that follows only fetches the result.
"""

from __future__ import annotations

from typing import Any

from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import DuplicateKeyError

# Each retry happens only when another writer changed the document in between.
_MAX_ATTEMPTS = 5


async def get_or_insert(
    coll: AsyncCollection, query: dict[str, Any], new_doc: dict[str, Any]
) -> tuple[dict[str, Any], bool]:
    """The document matching ``query`` (a unique key), inserting ``new_doc`` if there is none.

    Returns ``(document, was_created)``. Insert first: for the callers (a customer or
    conversation not found a moment ago) the insert usually wins, in one round trip. When
    another writer won, the unique index refuses ours and we read theirs.
    """
    for _ in range(_MAX_ATTEMPTS):
        try:
            await coll.insert_one(new_doc)
            return new_doc, True
        except DuplicateKeyError:
            existing = await coll.find_one(query)
            if existing is not None:
                return existing, False
            # The winner's document is not readable yet (or was removed): try again.
    raise RuntimeError(f"get-or-insert on {coll.name} did not settle after {_MAX_ATTEMPTS} attempts")


async def upsert_get(
    coll: AsyncCollection, query: dict[str, Any], update: dict[str, Any]
) -> tuple[dict[str, Any], bool]:
    """Atomic upsert on a unique key, then the document: ``(document, was_created)``.

    Concurrent upserts of one missing key: real MongoDB may answer ``DuplicateKeyError`` to
    the loser; the winner's document exists by then, so the retry updates it.
    """
    for _ in range(_MAX_ATTEMPTS):
        try:
            result = await coll.update_one(query, update, upsert=True)
        except DuplicateKeyError:
            continue
        doc = await coll.find_one(query)
        if doc is not None:
            return doc, result.upserted_id is not None
    raise RuntimeError(f"upsert on {coll.name} did not settle after {_MAX_ATTEMPTS} attempts")


async def update_get(
    coll: AsyncCollection, query: dict[str, Any], update: dict[str, Any], *, key: dict[str, Any] | None = None
) -> dict[str, Any] | None:
    """Update one document matching ``query``, then read it back by ``key`` (default: its
    ``_id`` from ``query``, with its ``channel_id`` if it has one); None if nothing matched.

    The read may already see a later write by someone else — callers use the result as "the
    state now", never to decide anything.
    """
    result = await coll.update_one(query, update)
    if result.matched_count == 0:
        return None
    if key is None:
        # By ``_id``, and by the shard key when the update named it, so that a sharded cluster
        # routes the read too (``_id`` first: the embedded store scans when another field leads).
        key = {"_id": query["_id"], **({"channel_id": query["channel_id"]} if "channel_id" in query else {})}
    return await coll.find_one(key)
