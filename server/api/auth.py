"""Who is calling: bearer tokens to principals (admin, internal sender, inbox owner).

API.md §6: a missing or wrong token is 401 everywhere; a valid token of the wrong kind is
403. So a token is first *resolved* to whatever it is, then checked against what the
endpoint needs. Config tokens are compared in constant time against every candidate;
inbox tokens are looked up by their SHA-256 (the stored form), with a short per-process
cache so that every REST call and WebSocket connect is not a MongoDB read.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Any

from models.cache import TtlLru
from models.store import Store
from server.api.errors import forbidden, unauthorized

ADMIN = "admin"
INTERNAL = "internal"
INBOX = "inbox"
METRICS = "metrics"

# A revoked or rotated inbox token keeps working in a process for at most this long.
TOKEN_CACHE_SECS = 30.0
TOKEN_CACHE_MAX = 10_000


@dataclass(frozen=True)
class Principal:
    kind: str
    owner: dict[str, Any] | None = None

    @property
    def owner_id(self) -> Any:
        """The owner id of an inbox principal; None for the others."""
        return None if self.owner is None else self.owner.get("id")


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer …`` header, or None."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def _matches_any(token: str, candidates: tuple[str, ...] | list[str]) -> bool:
    # Compare against every candidate (no early exit) so timing does not tell which matched.
    found = False
    for candidate in candidates:
        if candidate and hmac.compare_digest(token.encode(), candidate.encode()):
            found = True
    return found


class Authenticator:
    def __init__(
        self,
        store: Store,
        *,
        admin_token: str | None,
        internal_tokens: tuple[str, ...],
        metrics_token: str | None = None,
    ) -> None:
        self.store = store
        self.admin_token = admin_token
        self.internal_tokens = internal_tokens
        self.metrics_token = metrics_token
        # token → its owner (None: no such token), so a burst of requests reads it once.
        self._inbox_cache: TtlLru[str, dict[str, Any] | None] = TtlLru(TOKEN_CACHE_MAX, TOKEN_CACHE_SECS)

    async def resolve(self, token: str | None) -> Principal | None:
        """The principal a token stands for, or None; secrets compared in constant time."""
        if not token or len(token) > 512:
            return None
        if self.admin_token and _matches_any(token, [self.admin_token]):
            return Principal(ADMIN)
        if _matches_any(token, self.internal_tokens):
            return Principal(INTERNAL)
        if self.metrics_token and _matches_any(token, [self.metrics_token]):
            return Principal(METRICS)
        owner = await self._inbox_owner(token)
        return None if owner is None else Principal(INBOX, owner)

    async def require(self, authorization: str | None, kind: str) -> Principal:
        """The principal of an Authorization header if it is of ``kind``, else 401/403."""
        principal = await self.resolve(bearer_token(authorization))
        return self.check(principal, kind)

    @staticmethod
    def check(principal: Principal | None, kind: str) -> Principal:
        """``principal`` if it is of ``kind``; 401 without one, 403 for another kind."""
        if principal is None:
            raise unauthorized()
        if principal.kind != kind:
            raise forbidden()
        return principal

    async def _inbox_owner(self, token: str) -> dict[str, Any] | None:
        hit, owner = self._inbox_cache.lookup(token)
        if hit:
            return owner
        owner = await self.store.tokens.owner_of(token)
        self._inbox_cache.put(token, owner)
        return owner
