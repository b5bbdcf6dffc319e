"""Opaque ids on the wire, ObjectIds in the database.

API.md: "an id that is malformed is simply not found" — so parsing never raises.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from bson import ObjectId
from bson.errors import InvalidId


def as_object_id(value: object) -> ObjectId | None:
    """An ObjectId from an ObjectId or its 24-hex string; None for anything else."""
    if isinstance(value, ObjectId):
        return value
    if not isinstance(value, str):
        return None
    try:
        return ObjectId(value)
    except (InvalidId, TypeError):
        return None


@dataclass
class Picked:
    """Ids an operator named, sorted for a requeue: those in the wanted state, those not found
    (or malformed), and those found in another state (with that state)."""

    ready: list[ObjectId] = field(default_factory=list)
    not_found: list[str] = field(default_factory=list)
    other_state: list[tuple[str, str]] = field(default_factory=list)


async def pick_in_state(
    raw_ids: list[str],
    fetch: Callable[[ObjectId], Awaitable[dict[str, Any] | None]],
    state: str,
    *,
    visible: Callable[[dict[str, Any]], bool] = lambda doc: True,
) -> Picked:
    """Read each named job once and sort it; ``visible`` hides jobs outside the caller's scope
    (another channel's), which then count as not found."""
    picked = Picked()
    for raw in raw_ids:
        oid = as_object_id(raw)
        doc = None if oid is None else await fetch(oid)
        if doc is None or not visible(doc):
            picked.not_found.append(raw)
        elif doc["state"] != state:
            picked.other_state.append((raw, doc["state"]))
        else:
            picked.ready.append(doc["_id"])
    return picked
