"""Cursor pagination of the REST API (API.md): ``limit`` bounds and opaque cursors.

A cursor encodes the (``updated_at``, ``_id``) of the last item of a page, so a page is one
indexed range query whatever its depth; every list endpoint (conversations, messages, dead
trigger deliveries) pages this way.
"""

from __future__ import annotations

import base64
import datetime as dt

import orjson
from bson import ObjectId

from models.ids import as_object_id
from models.timeutil import from_epoch_ms
from server.api.errors import bad_request, validation_error

DEFAULT_LIMIT = 50
MAX_LIMIT = 200


def parse_limit(raw: str | None, default: int = DEFAULT_LIMIT) -> int:
    """The ``limit`` query argument: ``default`` when absent, 422 outside 1..MAX_LIMIT."""
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise validation_error({"limit": ["must be an integer"]}) from None
    if not 1 <= value <= MAX_LIMIT:
        raise validation_error({"limit": [f"must be between 1 and {MAX_LIMIT}"]})
    return value


def encode_cursor(updated_at: dt.datetime, oid: ObjectId) -> str:
    """An opaque cursor after (``updated_at``, ``oid``)."""
    raw = orjson.dumps([round(updated_at.timestamp() * 1000), str(oid)])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[dt.datetime, ObjectId]:
    """The (``updated_at``, ``oid``) of a cursor; 400 ``invalid_cursor`` for anything else."""
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        ms, oid = orjson.loads(base64.urlsafe_b64decode(padded.encode()))
        object_id = as_object_id(oid)
        if object_id is None or not isinstance(ms, int):
            raise ValueError
        return from_epoch_ms(ms), object_id
    except (ValueError, TypeError, orjson.JSONDecodeError):
        raise bad_request("invalid_cursor", "The cursor is not one this server issued.") from None
