"""igsync's own TTL sweep (models/expiry.py, server/ops/expiry.py), against the real embedded
store — whose own sweeper igsync turns off because it decodes every document of every
TTL-indexed collection under the store's lock each minute (docs/performance.md, "Soak").

What a TTL index says has expired goes, through the index, in commands of at most ``batch``
documents; nothing else goes: not a document inside its TTL, not one outside a partial index,
not one whose field is not a date, not one in a collection without a TTL index.
"""

from __future__ import annotations

import datetime as dt
import uuid
from pathlib import Path
from typing import Any

from pymongo import ASCENDING

from config import Settings
from models.expiry import ExpiredDocuments, TtlIndex, TtlIndexes
from models.store import Store
from models.timeutil import utcnow
from server.app.embedded import EMBEDDED_EXPIRY_SWEEP_SECS, EmbeddedStores
from server.app.lifecycle import start_stores
from server.ops.expiry import ExpirySweeper
from server.ops.metrics import Metrics
from tests.support.commands import Commands
from tests.support.helpers import wait_for

NOW = dt.datetime(2026, 12, 6, 12, 0, tzinfo=dt.UTC)
HOUR = dt.timedelta(hours=1)


async def ids_of(coll: Any) -> set[Any]:
    return {doc["_id"] for doc in await coll.find({}, {"_id": 1}).to_list(None)}


# -- deleting ------------------------------------------------------------------------------


async def test_only_what_a_ttl_index_says_has_expired_is_deleted(db: tuple[Any, Commands]) -> None:
    database, _ = db
    audit, pairs, jobs, plain = database["audit"], database["pairs"], database["jobs"], database["plain"]
    declared = TtlIndexes(by_igsync=True)
    for coll, index in (
        (audit, declared.declare("audit", "received_at", 3600)),
        (pairs, declared.declare("pairs", "expires_at", 0)),
        (jobs, declared.declare("jobs", "finished_at", 60, {"state": "delivered"})),
    ):
        await declared.ensure(coll, index, name=f"{index.field}_ttl")
    await plain.create_index([("received_at", ASCENDING)])
    await audit.insert_many(
        [
            {"_id": "old", "received_at": NOW - 2 * HOUR},
            {"_id": "just-old", "received_at": NOW - HOUR - dt.timedelta(seconds=1)},
            {"_id": "inside", "received_at": NOW - HOUR + dt.timedelta(seconds=1)},
            {"_id": "not-a-date", "received_at": "2001-01-01"},
            {"_id": "no-field"},
            {"_id": "any-date-of-an-array", "received_at": [NOW, NOW - 3 * HOUR]},
        ]
    )
    await pairs.insert_many([{"_id": "past", "expires_at": NOW - HOUR}, {"_id": "future", "expires_at": NOW + HOUR}])
    await jobs.insert_many(
        [
            {"_id": "delivered", "state": "delivered", "finished_at": NOW - HOUR},
            {"_id": "dead", "state": "dead", "finished_at": NOW - HOUR},  # outside the partial index
        ]
    )
    await plain.insert_one({"_id": "no-ttl", "received_at": NOW - 100 * HOUR})

    deleted = await ExpiredDocuments(database, declared).delete_expired(NOW)

    assert deleted == {"audit": 3, "pairs": 1, "jobs": 1}
    assert await ids_of(audit) == {"inside", "not-a-date", "no-field"}
    assert await ids_of(pairs) == {"future"}
    assert await ids_of(jobs) == {"dead"}
    assert await ids_of(plain) == {"no-ttl"}
    # A second round finds nothing.
    assert await ExpiredDocuments(database, declared).delete_expired(NOW) == {}


async def test_a_backlog_goes_in_short_commands(db: tuple[Any, Commands]) -> None:
    database, commands = db
    coll = database["audit"]
    declared = TtlIndexes(by_igsync=True)
    await declared.ensure(coll, declared.declare("audit", "received_at", 60), name="received_at_ttl")
    await coll.insert_many([{"n": n, "received_at": NOW - HOUR} for n in range(7)] + [{"n": 99, "received_at": NOW}])
    commands.seen.clear()

    deleted = await ExpiredDocuments(database, declared, batch=3).delete_expired(NOW)

    assert deleted == {"audit": 7}
    assert [doc["n"] for doc in await coll.find({}).to_list(None)] == [99]
    # 3 + 3 + 1: three deletes of at most three documents each, none for the live one.
    assert commands.seen["delete"] == 3


async def test_a_document_whose_date_moved_on_since_the_read_stays(db: tuple[Any, Commands]) -> None:
    """The delete repeats the expiry filter: a lease renewed (or an expiry pushed back) between
    the read of the expired ids and their delete keeps its document."""
    database, _ = db
    coll = database["leases"]
    declared = TtlIndexes(by_igsync=True)
    index = declared.declare("leases", "lease_until", 0)
    await declared.ensure(coll, index, name="lease_until_ttl")
    await coll.insert_one({"_id": "lane", "lease_until": NOW - HOUR})

    class RenewedAfterTheRead(ExpiredDocuments):
        async def expired_ids(self, index: TtlIndex, now: dt.datetime) -> list[Any]:
            ids = await super().expired_ids(index, now)
            await coll.update_one({"_id": "lane"}, {"$set": {"lease_until": NOW + HOUR}})
            return ids

    sweep = RenewedAfterTheRead(database, declared)
    assert await ExpiredDocuments(database, declared).expired_ids(index, NOW) == ["lane"]
    deleted = await sweep.delete_expired(NOW)
    deleted_count = deleted.get("leases", 0)

    assert deleted_count == 0
    assert await ids_of(coll) == {"lane"}


# -- the service and who turns it on -----------------------------------------------------------


async def test_the_sweeper_expires_igsyncs_own_collections_and_counts_them(stores: EmbeddedStores) -> None:
    store = Store(stores.mongo_url or "", f"expiry_{uuid.uuid4().hex[:12]}")
    await store.ensure_indexes()
    metrics = Metrics(process_metrics=False)
    old = utcnow() - dt.timedelta(days=8)  # the audit log keeps 7 days by default
    await store.db.webhook_events.insert_many([{"received_at": old}, {"received_at": old}, {"received_at": utcnow()}])
    sweeper = ExpirySweeper(store.expiry, metrics, interval_secs=3600)
    try:
        await sweeper.start()  # its first round runs now

        # Counted once the round is done: the count says the round has run.
        expired = ("igsync_expired_documents_total", {"collection": "webhook_events"})
        await wait_for(lambda: metrics.registry.get_sample_value(*expired))
        assert metrics.registry.get_sample_value(*expired) == 2
        assert await store.db.webhook_events.count_documents({}) == 1
    finally:
        await sweeper.stop()
        await store.client.drop_database(store.db.name)
        await store.close()


async def test_the_sweeper_is_off_unless_configured(stores: EmbeddedStores) -> None:
    store = Store(stores.mongo_url or "", f"expiry_{uuid.uuid4().hex[:12]}")
    sweeper = ExpirySweeper(store.expiry, Metrics(process_metrics=False), interval_secs=0)
    try:
        await sweeper.start()
        assert sweeper._loop._task is None
    finally:
        await sweeper.stop()
        await store.close()


def test_serve_turns_the_sweep_on_for_the_embedded_store(tmp_path: Path) -> None:
    settings = Settings(data_dir=str(tmp_path / "data"), port=0)
    resolved = start_stores(settings)
    try:
        assert resolved.settings.expiry_sweep_secs == EMBEDDED_EXPIRY_SWEEP_SECS
    finally:
        resolved.stop()
    # Given store URLs (production), expiry stays with the store's own TTL monitor.
    assert Settings().expiry_sweep_secs == 0


async def test_expiring_by_igsync_leaves_the_store_no_ttl_index_and_back(stores: EmbeddedStores) -> None:
    """The embedded store's sweeper runs whatever its config says (SecantusDB 0.7.0b3's command
    line drops ``ttl_sweep_seconds``) and finds nothing to do only where there is no TTL index:
    when igsync expires, every declared TTL index is a plain one igsync's sweep reads. Switching
    back (a MongoDB deployment) gives the store its TTL indexes again."""
    name = f"expiry_{uuid.uuid4().hex[:12]}"

    async def ttl_indexes(store: Store) -> set[str]:
        found = set()
        for coll in await store.db.list_collection_names():
            async for spec in await store.db[coll].list_indexes():
                if "expireAfterSeconds" in spec:
                    found.add(f"{coll}.{spec['name']}")
        return found

    by_igsync = Store(stores.mongo_url or "", name, expire_by_igsync=True)
    by_store = Store(stores.mongo_url or "", name)
    try:
        await by_store.ensure_indexes()
        declared = {f"{i.collection}" for i in by_store.ttl.declared}
        assert declared == {"webhook_events", "trigger_jobs", "trigger_lanes", "orphan_events", "echo_pairs"}
        assert {n.split(".")[0] for n in await ttl_indexes(by_store)} == declared

        await by_igsync.ensure_indexes()
        assert await ttl_indexes(by_igsync) == set()
        old = utcnow() - dt.timedelta(days=8)
        await by_igsync.db.webhook_events.insert_many([{"received_at": old}, {"received_at": utcnow()}])
        assert await by_igsync.expiry.delete_expired(utcnow()) == {"webhook_events": 1}

        await by_store.ensure_indexes()
        assert {n.split(".")[0] for n in await ttl_indexes(by_store)} == declared
    finally:
        await by_store.client.drop_database(name)
        await by_igsync.close()
        await by_store.close()
