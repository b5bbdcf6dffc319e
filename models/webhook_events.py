"""The ``webhook_events`` collection: raw, signature-verified webhook bodies for audit and replay.

Kept for ``webhook_events_ttl_days`` by a TTL index. The body is stored as the exact bytes
Meta signed, so ``igsync replay`` re-runs precisely what arrived.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from bson import Binary, ObjectId
from pymongo import ASCENDING, DESCENDING
from pymongo.asynchronous.database import AsyncDatabase

from models.expiry import TtlIndexes
from models.timeutil import utcnow


class WebhookEventRepository:
    def __init__(self, db: AsyncDatabase, *, ttl_days: int = 7, ttl: TtlIndexes | None = None) -> None:
        self.coll = db["webhook_events"]
        self.ttl_secs = ttl_days * 86400
        self._ttl = ttl or TtlIndexes()
        self._expiry = self._ttl.declare("webhook_events", "received_at", self.ttl_secs)

    async def ensure_indexes(self) -> None:
        """Create the audit log's indexes, with its TTL (idempotent)."""
        await self._ttl.ensure(self.coll, self._expiry, name="received_at_ttl")
        await self.coll.create_index([("account_ids", ASCENDING), ("received_at", DESCENDING)], name="account_received")

    @staticmethod
    def build(
        body: bytes, account_ids: list[str], received_at: dt.datetime, results: list[dict[str, Any]]
    ) -> dict[str, Any]:
        """The audit document of one webhook, written after its items were processed, with
        their results (written once, never updated)."""
        return {
            "_id": ObjectId(),
            "body": Binary(body),
            "account_ids": account_ids,
            "signature_verified": True,
            "received_at": received_at,
            "processed_at": utcnow(),
            "results": results,
        }

    async def insert_many(self, docs: list[dict[str, Any]]) -> None:
        """Write a batch of audit documents (:mod:`server.ingest.audit` decides when)."""
        await self.coll.insert_many(docs, ordered=False)

    def iterate(self, *, since: dt.datetime | None = None, account_id: str | None = None) -> Any:
        """The kept webhook bodies in arrival order (since ``since``, of an account)."""
        query: dict[str, Any] = {}
        if since is not None:
            query["received_at"] = {"$gte": since}
        if account_id is not None:
            query["account_ids"] = account_id
        return self.coll.find(query).sort("received_at", ASCENDING)

    async def last_received(self, account_ids: list[str]) -> dt.datetime | None:
        """When a webhook last came for any of ``account_ids``, or None."""
        doc = await self.coll.find_one(
            {"account_ids": {"$in": account_ids}}, {"received_at": 1}, sort=[("received_at", DESCENDING)]
        )
        return None if doc is None else doc["received_at"]
