"""Opaque ids on the wire, ObjectIds in the database.

API.md: "an id that is malformed is simply not found" — so parsing never raises.
"""

from __future__ import annotations

from bson import ObjectId
from bson.errors import InvalidId


def as_object_id(value: object) -> ObjectId | None:
    if isinstance(value, ObjectId):
        return value
    if not isinstance(value, str):
        return None
    try:
        return ObjectId(value)
    except (InvalidId, TypeError):
        return None
