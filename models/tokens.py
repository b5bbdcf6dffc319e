"""The ``tokens`` collection: inbox bearer tokens, stored as SHA-256 hashes only.

Tokens are 256-bit random strings, so a fast hash is enough (no password stretching):
the stored hash cannot be turned back into a usable token, and a lookup is one indexed
read of the hash.
"""

from __future__ import annotations

import hashlib
import secrets
from typing import Any

from pymongo import ASCENDING
from pymongo.asynchronous.database import AsyncDatabase

from models.timeutil import utcnow

TOKEN_PREFIX = "igs_"


def hash_token(token: str) -> str:
    """The stored form of a token: its SHA-256, never the token itself."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_token() -> str:
    """A new random inbox token."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


class TokenRepository:
    def __init__(self, db: AsyncDatabase) -> None:
        self.coll = db["tokens"]

    async def ensure_indexes(self) -> None:
        """Create the collection's indexes (idempotent)."""
        await self.coll.create_index([("token_hash", ASCENDING)], unique=True, name="token_hash_unique")

    async def create(self, owner: dict[str, Any], *, label: str | None = None) -> str:
        """Store a new token for ``owner`` and return it — the only time it is ever readable."""
        token = new_token()
        await self.coll.insert_one(
            {"token_hash": hash_token(token), "owner": owner, "label": label, "created_at": utcnow()}
        )
        return token

    async def owner_of(self, token: str) -> dict[str, Any] | None:
        """The owner a token was issued for, or None."""
        doc = await self.coll.find_one({"token_hash": hash_token(token)}, {"owner": 1})
        return None if doc is None else doc["owner"]
