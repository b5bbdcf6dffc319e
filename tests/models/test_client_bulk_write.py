"""Where igsync sends several collections' writes as one client ``bulkWrite``, and why not on
the embedded store (models/store.Store.adapt_to_server).

SecantusDB 0.7 answers a ``bulkWrite`` with ``writeConcern: {j: true}`` before its writes are in
its journal: a process killed right after loses them, though they were acknowledged. igsync
answers a webhook 200 only once its message is durable, so on that store it sends the writes
as separate (journaled) commands; on MongoDB 8.0+ it uses the one command.
"""

from __future__ import annotations

from pathlib import Path

from pymongo import InsertOne
from pymongo.errors import PyMongoError

from models.store import Store, mongo_client
from server.app.embedded import EmbeddedStores
from tests.support.helpers import wait_for


async def test_the_embedded_store_gets_separate_journaled_commands(stores: EmbeddedStores) -> None:
    store = Store(stores.mongo_url or "", "adapt_to_server")
    try:
        store.messages.use_client_bulk_write(True)
        store.conversations.use_client_bulk_write(True)
        await store.adapt_to_server()
        assert not store.messages._inserter.client_bulk_write
        assert not store.conversations._updater.client_bulk_write
    finally:
        await store.close()


async def test_a_store_not_adapted_sends_plain_commands() -> None:
    store = Store("mongodb://127.0.0.1:1", "never_connected")  # never asked what it talks to
    try:
        assert not store.messages._inserter.client_bulk_write
        assert not store.conversations._updater.client_bulk_write
    finally:
        await store.close()


async def test_secantusdb_still_loses_an_acknowledged_client_bulk_write_when_killed(tmp_path: Path) -> None:
    """Why the above. When this fails, SecantusDB journals a ``bulkWrite`` now: adapt_to_server
    may then use it there too (and the round trips it saves, docs/performance.md)."""
    own = EmbeddedStores(tmp_path / "stores", lock=False).start()
    client = mongo_client(own.mongo_url or "")
    try:
        coll = client["durability"]["kept"]
        await coll.insert_one({"_id": "journaled"})
        await client.bulk_write(
            [InsertOne({"_id": "in a bulkWrite"}, namespace=coll.full_name)], write_concern=coll.write_concern
        )
        assert coll.write_concern.document.get("j") is True
        mongo = own._mongo
        assert mongo is not None and mongo.proc is not None
        mongo.proc.kill()
        mongo.proc.wait()
        own.start_mongo(mongo.port)

        async def kept() -> list[str] | None:
            try:
                return [d["_id"] for d in await coll.find().to_list(None)]
            except PyMongoError:
                return None  # the client is still finding the restarted store

        assert await wait_for(kept, timeout=30) == ["journaled"]
    finally:
        await client.close()
        own.stop()
