"""Atomic get-or-create against a unique index — the only way documents are created by key.

Two processes that both see "no customer yet" must end with one customer. That is only
true when the decision is the database's: an upsert on a unique index. This module holds
the two corner cases every caller would otherwise have to remember.
"""

from __future__ import annotations

from typing import Any

from bson import ObjectId
from pymongo import ReturnDocument
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import DuplicateKeyError

# Enough for any realistic burst: each retry happens only when another writer just won.
_MAX_ATTEMPTS = 5


async def upsert_get(
    coll: AsyncCollection, query: dict[str, Any], update: dict[str, Any]
) -> tuple[dict[str, Any], bool]:
    """``find_one_and_update(upsert=True)`` returning ``(document, was_created)``.

    ``was_created`` is decided by the document itself: we ``$setOnInsert`` a fresh
    ``_id`` and compare it with the ``_id`` that comes back.

    Why the loop:
    * Real MongoDB can answer ``DuplicateKeyError`` to the loser of two concurrent upserts
      of the same missing key (before 4.2, or when the filter is not the full index key).
      The winner's document exists by then, so trying again finds it.
    * SecantusDB applies every concurrent upsert but can answer ``None`` to one caller
      (STACK-NOTES). The document exists, so reading it again is correct.
    """
    new_id = ObjectId()
    update = {**update, "$setOnInsert": {**update.get("$setOnInsert", {}), "_id": new_id}}
    for _ in range(_MAX_ATTEMPTS):
        try:
            doc = await coll.find_one_and_update(query, update, upsert=True, return_document=ReturnDocument.AFTER)
        except DuplicateKeyError:
            continue
        if doc is None:
            doc = await coll.find_one(query)
            if doc is None:
                continue
        return doc, doc["_id"] == new_id
    raise RuntimeError(f"upsert on {coll.name} did not settle after {_MAX_ATTEMPTS} attempts")
