"""Index upkeep shared by the repositories: replacing an index by its successor."""

from __future__ import annotations

from collections.abc import Iterable

from pymongo.asynchronous.collection import AsyncCollection


async def drop_superseded(coll: AsyncCollection, names: Iterable[str]) -> None:
    """Drop indexes an earlier version created and a newer one replaced (after the new ones
    exist, so the collection is never without its unique keys). Idempotent."""
    present = await coll.index_information()
    for name in names:
        if name in present:
            await coll.drop_index(name)
