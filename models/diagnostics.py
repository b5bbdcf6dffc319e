"""The MongoDB queries of ``igsync doctor``: index inspection, recent activity, test-data clean-up.

* :func:`planned_indexes` asks each repository of a :class:`~models.store.Store` which indexes its
  ``ensure_indexes`` creates, by running it against stand-in collections that record the calls —
  so the doctor compares with exactly what start-up creates, without a second list to keep in sync.
* :func:`index_problems` compares that plan with ``listIndexes`` of the real collections.
* Activity counts use the ``_id`` index (an ObjectId starts with its creation time), so they read
  only the last hour's documents however large the collection is.
* :func:`purge_test_channel` removes everything the doctor's signed test webhook created.
"""

from __future__ import annotations

import asyncio
import copy
import datetime as dt
import time
from dataclasses import dataclass, field
from typing import Any

from bson import ObjectId
from pymongo import ASCENDING
from pymongo.asynchronous.collection import AsyncCollection

from models.store import Store
from models.timeutil import utcnow

TRIGGER_JOBS_COLLECTION = "trigger_jobs"
# How often wait_for_audit_rows looks for a server's audit copy.
AUDIT_POLL_SECS = 0.05


@dataclass(frozen=True)
class PlannedIndex:
    collection: str
    name: str
    keys: tuple[tuple[str, Any], ...]
    unique: bool = False
    options: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def describe(self) -> str:
        """The index as one line: collection, name, keys, uniqueness."""
        keys = ", ".join(k for k, _ in self.keys)
        return f"{self.collection}.{self.name} ({keys}){' unique' if self.unique else ''}"


def _normalise_keys(keys: Any) -> tuple[tuple[str, Any], ...]:
    if isinstance(keys, str):
        return ((keys, ASCENDING),)
    return tuple((str(k), v) for k, v in keys)


class _IndexRecorder:
    """Stands in for a collection while ``ensure_indexes`` runs: records each index, creates nothing."""

    def __init__(self, name: str, sink: list[PlannedIndex]) -> None:
        self.name = name
        self.sink = sink

    async def create_index(self, keys: Any, **options: Any) -> str:
        normalised = _normalise_keys(keys)
        name = options.pop("name", None) or "_".join(f"{k}_{v}" for k, v in normalised)
        unique = bool(options.pop("unique", False))
        self.sink.append(PlannedIndex(self.name, name, normalised, unique, options))
        return name

    async def index_information(self) -> dict[str, Any]:
        """No index exists in a plan: nothing superseded to drop."""
        return {}

    def __getattr__(self, attr: str) -> Any:
        raise AttributeError(f"ensure_indexes of {self.name!r} uses {attr}(), which the doctor cannot plan")


async def planned_indexes(store: Store) -> list[PlannedIndex]:
    """Every index ``store.ensure_indexes()`` creates, without touching the database."""
    planned: list[PlannedIndex] = []
    for repository in store.repositories:
        stand_in = copy.copy(repository)
        for attr, value in vars(repository).items():
            if isinstance(value, AsyncCollection):
                setattr(stand_in, attr, _IndexRecorder(value.name, planned))
        await stand_in.ensure_indexes()
    return planned


async def index_problems(store: Store, planned: list[PlannedIndex]) -> list[str]:
    """What is missing or different, one line each; empty when every planned index exists."""
    existing: dict[str, dict[str, Any]] = {}
    problems = []
    for index in planned:
        if index.collection not in existing:
            existing[index.collection] = await store.db[index.collection].index_information()
        info = existing[index.collection]
        found = info.get(index.name)
        if found is None:
            found = next((i for i in info.values() if _normalise_keys(i.get("key", [])) == index.keys), None)
        if found is None:
            problems.append(f"missing {index.describe()}")
        elif _normalise_keys(found.get("key", [])) != index.keys or bool(found.get("unique")) != index.unique:
            problems.append(f"different {index.describe()}: found {dict(found.get('key', []))}")
    return problems


async def count_messages_since(store: Store, channel_id: ObjectId, since: dt.datetime) -> int:
    """How many messages of a channel were stored since ``since`` (by ObjectId time)."""
    return await store.messages.coll.count_documents(
        {"_id": {"$gte": ObjectId.from_datetime(since)}, "channel_id": channel_id}
    )


async def unmatched_accounts(store: Store, known: set[str], since: dt.datetime, limit: int = 20) -> dict[str, int]:
    """Account ids (``entry.id``) of recent webhook bodies that no connected channel has."""
    pipeline: list[dict[str, Any]] = [
        {"$match": {"received_at": {"$gte": since}}},
        {"$unwind": "$account_ids"},
        {"$match": {"account_ids": {"$nin": sorted(known)}}},
        {"$group": {"_id": "$account_ids", "bodies": {"$sum": 1}}},
        {"$sort": {"bodies": -1}},
        {"$limit": limit},
    ]
    rows = await (await store.webhook_events.coll.aggregate(pipeline)).to_list(None)
    return {str(r["_id"]): int(r["bodies"]) for r in rows}


@dataclass
class OutboxState:
    exists: bool
    oldest_pending: dict[str, Any] | None = None
    pending: int = 0
    dead: int = 0


async def trigger_outbox_state(store: Store) -> OutboxState:
    """The workflow-trigger outbox (``trigger_jobs``: ``state`` pending → delivered | dead |
    cancelled), read only once it holds a job, so the doctor works with or without triggers
    (the collection and its indexes exist from the first start either way)."""
    coll = store.db[TRIGGER_JOBS_COLLECTION]
    if await coll.find_one({}, {"_id": 1}) is None:
        return OutboxState(exists=False)
    pending = {"state": "pending"}
    return OutboxState(
        exists=True,
        oldest_pending=await coll.find_one(pending, {"created_at": 1}, sort=[("created_at", ASCENDING)]),
        pending=await coll.count_documents(pending),
        dead=await coll.count_documents({"state": "dead"}),
    )


@dataclass
class MediaQueueState:
    exists: bool
    oldest_due: dict[str, Any] | None = None  # the pending job due longest ago
    pending: int = 0
    failed: int = 0


async def media_queue_state(store: Store, now: dt.datetime) -> MediaQueueState:
    """The media download queue (``media_jobs``: pending → running → completed | failed |
    cancelled): how many wait, the one due longest ago, how many failed for good. Every
    query is on the ``(state, next_attempt_at)`` index."""
    coll = store.media_jobs.coll
    if await coll.find_one({}, {"_id": 1}) is None:
        return MediaQueueState(exists=False)
    due = {"state": "pending", "next_attempt_at": {"$lte": now}}
    return MediaQueueState(
        exists=True,
        oldest_due=await coll.find_one(due, {"next_attempt_at": 1}, sort=[("next_attempt_at", ASCENDING)]),
        pending=await coll.count_documents({"state": "pending"}),
        failed=await coll.count_documents({"state": "failed"}),
    )


async def purge_test_channel(store: Store, channel_id: ObjectId, account_ids: list[str]) -> dict[str, int]:
    """Delete the doctor's test channel and everything written for it; counts per collection."""
    conversation_ids = [
        c["_id"] for c in await store.conversations.coll.find({"channel_id": channel_id}, {"_id": 1}).to_list(None)
    ]
    removed = {
        "messages": (
            await store.messages.coll.delete_many({"conversation_id": {"$in": conversation_ids}})
        ).deleted_count,
        "conversations": (await store.conversations.coll.delete_many({"channel_id": channel_id})).deleted_count,
        "customers": (await store.customers.coll.delete_many({"channel_id": channel_id})).deleted_count,
        "channels": (await store.channels.coll.delete_many({"_id": channel_id})).deleted_count,
        "webhook_events": await delete_audit_rows(store, account_ids),
    }
    return removed


async def wait_for_audit_rows(store: Store, account_ids: list[str], timeout_secs: float) -> bool:
    """Wait until a running server has written the audit copy of a test webhook (it writes
    them after answering); False if none came within ``timeout_secs``."""
    deadline = time.monotonic() + timeout_secs
    query = {"account_ids": {"$in": account_ids}}
    while await store.webhook_events.coll.count_documents(query, limit=1) == 0:
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(AUDIT_POLL_SECS)  # another process's write: polled, with a deadline
    return True


async def delete_audit_rows(store: Store, account_ids: list[str]) -> int:
    """The audit copies of the doctor's own test webhooks (their account ids are unique per run)."""
    return (await store.webhook_events.coll.delete_many({"account_ids": {"$in": account_ids}})).deleted_count


async def create_test_channel(store: Store, page_id: str) -> dict[str, Any]:
    """A channel nobody owns, with AI triggers off, so the test message starts no workflow."""
    channel, _ = await store.channels.connect(
        page_id,
        {
            "username": "igsync_doctor_test",
            "owner": {"id": "igsync-doctor", "email": "doctor@igsync.invalid"},
            "ai_enabled": False,
            "doctor_test": True,
            "created_by_doctor_at": utcnow(),
        },
    )
    return channel
