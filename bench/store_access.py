"""Why the repositories avoid some MongoDB features on the embedded store — measured.

    .venv/bin/python -m bench.store_access [--docs 2000]

For a collection of N documents (small N = 200 as the baseline, in the same run) it times:
- ``find_one_and_update`` by ``_id`` versus ``update_one`` by ``_id`` followed by ``find_one``;
- a lookup through a partial compound multikey unique index versus a single-field multikey
  unique index holding the same keys;
- a query with a top-level ``$or`` tie-break versus one range;
- marking a conversation's unanswered messages through the conversation-time index versus an
  index holding the whole filter;
and prints each cost and its growth from 200 to N documents. On real MongoDB all of these
are index lookups; on SecantusDB 0.7 the first of each pair scans the collection.

Then, on igsync's own collections and indexes (``Store.ensure_indexes``), what a document
costs alone and in a batch of eight — the figures behind group commit and behind the ingest
bench's ratio to its floor (docs/performance.md) — and what each index on the messages
collection adds to an insert and an update, the ``_id`` index alone as the baseline.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from collections.abc import Awaitable, Callable
from typing import Any

from bson import Binary, ObjectId
from pymongo import UpdateOne

from models.store import Store, mongo_client
from server.app.embedded import EmbeddedStores


async def per_op_ms(fn: Callable[[int], Awaitable[Any]], n: int) -> float:
    started = time.perf_counter()
    for i in range(n):
        await fn(i)
    return (time.perf_counter() - started) / n * 1000


async def measure(url: str, docs: int, reps: int) -> dict[str, float]:
    client = mongo_client(url)
    db = client[f"store_access_{docs}"]
    channel = ObjectId()
    ids = [ObjectId() for _ in range(docs)]
    rows = [
        {"_id": ids[i], "ch": channel, "mids": [f"m{i}"], "keys": [f"{channel}:m{i}"], "t": i, "n": 0}
        for i in range(docs)
    ]
    await db.c.insert_many(rows)
    await db.c.create_index(
        [("ch", 1), ("mids", 1)], unique=True, partialFilterExpression={"mids": {"$type": "string"}}
    )
    await db.c.create_index("keys", unique=True)
    await db.c.create_index([("ch", 1), ("t", 1)])
    # One conversation of N messages, all answered: what an owner reply's "mark the earlier
    # customer messages answered" costs, with the conversation-time index only and with the
    # index that holds the whole filter (models/messages.py: mark_answered).
    await db.m.insert_many([{"conv": channel, "at": i, "type": "customer", "answered": True} for i in range(docs)])
    await db.m.create_index([("conv", 1), ("at", 1)])
    await db.m2.insert_many([{"conv": channel, "at": i, "type": "customer", "answered": True} for i in range(docs)])
    await db.m2.create_index([("conv", 1), ("answered", 1), ("at", 1)])
    out = {
        "findAndModify by _id": await per_op_ms(
            lambda i: db.c.find_one_and_update({"_id": ids[i % docs]}, {"$inc": {"n": 1}}), reps
        ),
        "update_one + find_one by _id": await per_op_ms(lambda i: _update_then_find(db.c, ids[i % docs]), reps),
        "partial compound multikey lookup": await per_op_ms(
            lambda i: db.c.find_one({"ch": channel, "mids": f"m{i % docs}"}), reps
        ),
        "single-field multikey lookup": await per_op_ms(
            lambda i: db.c.find_one({"keys": f"{channel}:m{i % docs}"}), reps
        ),
        "top-level $or page": await per_op_ms(
            lambda i: (
                db.c.find({"ch": channel, "$or": [{"t": {"$lt": docs // 2}}, {"t": docs // 2, "_id": {"$lt": ids[0]}}]})
                .sort("t", -1)
                .limit(20)
                .to_list(None)
            ),
            max(5, reps // 10),
        ),
        "single-range page": await per_op_ms(
            lambda i: db.c.find({"ch": channel, "t": {"$lte": docs // 2}}).sort("t", -1).limit(21).to_list(None),
            max(5, reps // 10),
        ),
        "mark answered, time index": await per_op_ms(
            lambda i: db.m.update_many(
                {"conv": channel, "at": {"$lte": docs}, "type": "customer", "answered": False},
                {"$set": {"answered": True}},
            ),
            max(5, reps // 10),
        ),
        "mark answered, whole-filter index": await per_op_ms(
            lambda i: db.m2.update_many(
                {"conv": channel, "answered": False, "at": {"$lte": docs}}, {"$set": {"answered": True}}
            ),
            max(5, reps // 10),
        ),
    }
    await client.drop_database(db.name)
    await client.close()
    return out


async def _update_then_find(coll: Any, oid: ObjectId) -> Any:
    await coll.update_one({"_id": oid}, {"$inc": {"n": 1}})
    return await coll.find_one({"_id": oid})


async def per_document(url: str, reps: int) -> dict[str, tuple[float, float]]:
    """(alone, per document in a batch of 8) in ms, on igsync's real indexes."""
    store = Store(url, "store_access_docs")
    await store.ensure_indexes()
    db, batch = store.db, 8
    channel = ObjectId()
    convs = [ObjectId() for _ in range(400)]
    await db.conversations.insert_many(
        [
            {
                "_id": oid,
                "channel_id": channel,
                "customer_id": ObjectId(),
                "customer_instagram_id": str(i),
                "updated_at": i,
                "n": 0,
            }
            for i, oid in enumerate(convs)
        ]
    )
    counter = iter(range(10**9))

    def message() -> dict[str, Any]:
        n = next(counter)
        return {
            "mid_keys": [f"{channel}:m{n}"],
            "conversation_id": convs[n % 400],
            "sent_at": n,
            "created_at": n,
            "type": "customer",
            "is_answered": False,
            "content": "hello there",
        }

    body = Binary(b'{"object":"instagram","entry":[]}' * 12)  # ~400 bytes, a one-message webhook

    def audit() -> dict[str, Any]:
        return {"body": body, "account_ids": ["17841400000000001"], "received_at": next(counter), "results": []}

    async def mark(size: int) -> None:
        # One owner reply marking ``size`` customer messages of its conversation answered.
        conversation = ObjectId()
        await db.messages.insert_many([{**message(), "conversation_id": conversation} for _ in range(size)])
        started = time.perf_counter()
        await db.messages.update_many(
            {"conversation_id": conversation, "is_answered": False, "sent_at": {"$lte": 10**9}},
            {"$set": {"is_answered": True}},
        )
        marking[size] += time.perf_counter() - started

    marking = {1: 0.0, batch: 0.0}
    for _ in range(reps // batch):
        await mark(1)
        await mark(batch)

    def conv_update(i: int) -> UpdateOne:
        return UpdateOne({"_id": convs[i % 400]}, {"$inc": {"n": 1}, "$set": {"updated_at": next(counter)}})

    out = {
        "insert, unindexed collection (floor)": (
            await per_op_ms(lambda i: db.floor.insert_one({"n": i}), reps),
            await per_op_ms(lambda i: db.floor.insert_many([{"n": i} for _ in range(batch)]), reps // batch) / batch,
        ),
        "insert a message (its 8 indexes)": (
            await per_op_ms(lambda i: db.messages.insert_one(message()), reps),
            await per_op_ms(lambda i: db.messages.insert_many([message() for _ in range(batch)]), reps // batch)
            / batch,
        ),
        "insert an audit record (webhook_events)": (
            await per_op_ms(lambda i: db.webhook_events.insert_one(audit()), reps),
            await per_op_ms(lambda i: db.webhook_events.insert_many([audit() for _ in range(batch)]), reps // batch)
            / batch,
        ),
        "mark a message answered": (
            marking[1] / (reps // batch) * 1000,
            marking[batch] / (reps // batch) / batch * 1000,
        ),
        "update a conversation": (
            await per_op_ms(lambda i: db.conversations.bulk_write([conv_update(i)]), reps),
            await per_op_ms(
                lambda i: db.conversations.bulk_write([conv_update(i * batch + j) for j in range(batch)]),
                reps // batch,
            )
            / batch,
        ),
        "read a conversation by _id": (
            await per_op_ms(lambda i: db.conversations.find_one({"_id": convs[i % 400]}), reps),
            await per_op_ms(
                lambda i: db.conversations.find(
                    {"_id": {"$in": convs[i % 50 * batch : i % 50 * batch + batch]}}
                ).to_list(None),
                reps // batch,
            )
            / batch,
        ),
    }
    await store.client.drop_database(db.name)
    await store.close()
    return out


MESSAGE_INDEXES: list[tuple[list[tuple[str, int]], dict[str, Any]]] = [
    # models/messages.py and models/trigger_jobs.py, in the order they are created.
    ([("mid_keys", 1)], {"unique": True}),
    ([("client_key", 1)], {"unique": True, "sparse": True}),
    ([("pair_key", 1)], {"unique": True, "sparse": True}),
    ([("conversation_id", 1), ("sent_at", 1), ("_id", 1)], {}),
    ([("conversation_id", 1), ("is_answered", 1), ("sent_at", 1)], {}),
    ([("created_at", 1)], {}),
    ([("trigger_pending", 1)], {"partialFilterExpression": {"trigger_pending": True}}),
]


async def _insert_update_ms(
    coll: Any, make: Callable[[], dict[str, Any]], batch: int, reps: int
) -> tuple[float, float]:
    insert = await per_op_ms(lambda i: coll.insert_many([make() for _ in range(batch)]), reps) / batch
    ids = [doc["_id"] for doc in await coll.find({}, {"_id": 1}).to_list(None)]
    update = await per_op_ms(
        lambda i: coll.update_many({"_id": {"$in": ids[i * batch : (i + 1) * batch]}}, {"$set": {"is_answered": True}}),
        reps,
    )
    return insert, update / batch


async def per_index(url: str, reps: int) -> list[tuple[int, float, float]]:
    """(indexes, insert ms, update ms) per document in batches of 8, for a message-shaped
    document in collections with the ``_id`` index plus the first k of the messages' indexes."""
    client = mongo_client(url)
    db = client["store_access_indexes"]
    batch, out = 8, []

    def message() -> dict[str, Any]:
        now = ObjectId().generation_time
        return {
            "mid_keys": [str(ObjectId())],
            "conversation_id": ObjectId(),
            "sent_at": now,
            "created_at": now,
            "is_answered": False,
            "type": "customer",
            "message_type": "text",
            "content": "question from the bench, long enough to look like a real message",
        }

    for k in range(len(MESSAGE_INDEXES) + 1):
        coll = db[f"k{k}"]
        for keys, options in MESSAGE_INDEXES[:k]:
            await coll.create_index(keys, **options)
        insert, update = await _insert_update_ms(coll, message, batch, reps)
        out.append((k + 1, insert, update))
    await client.drop_database(db.name)
    await client.close()
    return out


async def main(args: argparse.Namespace) -> None:
    with EmbeddedStores(tempfile.mkdtemp(prefix="igsync-store-access-"), redis=False, lock=False) as stores:
        assert stores.mongo_url
        small = await measure(stores.mongo_url, 200, args.reps)
        large = await measure(stores.mongo_url, args.docs, args.reps)
        documents = await per_document(stores.mongo_url, args.reps)
        indexes = await per_index(stores.mongo_url, args.reps)
    print(f"{'operation':36} {'200 docs':>10} {f'{args.docs} docs':>12} {'growth':>8}")
    for name in small:
        print(f"{name:36} {small[name]:8.2f}ms {large[name]:10.2f}ms {large[name] / small[name]:7.1f}x")
    print(f"\n{'per document, igsync indexes':42} {'alone':>10} {'batch of 8':>12} {'ratio':>8}")
    for name, (alone, batched) in documents.items():
        print(f"{name:42} {alone:8.2f}ms {batched:10.2f}ms {batched / alone:7.2f}x")
    print_ceiling(documents, echo_share=args.echo_share)
    print(f"\n{'indexes on a message collection':42} {'insert':>10} {'update':>12}   (per document, batches of 8)")
    for count, insert, update in indexes:
        print(f"{count:<42} {insert:8.2f}ms {update:10.2f}ms")


def required_store_ms(documents: dict[str, tuple[float, float]], *, echo_share: float) -> float:
    """Store time of the writes every message requires, every command shared by eight
    requests (better than the ingest bench's load gets): the audit record, the message, the
    conversation update and, for a customer message, its marking answered by the next reply."""
    batched = {name: figures[1] for name, figures in documents.items()}
    return (
        batched["insert an audit record (webhook_events)"]
        + batched["insert a message (its 8 indexes)"]
        + batched["update a conversation"]
        + (1 - echo_share) * batched["mark a message answered"]
    )


def print_ceiling(documents: dict[str, tuple[float, float]], *, echo_share: float) -> None:
    required = required_store_ms(documents, echo_share=echo_share)
    floor = documents["insert, unindexed collection (floor)"][1]
    print(
        f"\nthe required writes of one message, batches of 8: {required:.2f} ms of store time "
        f"({required / floor:.0f}x the floor's insert, {floor:.2f} ms): a store-bound ceiling of "
        f"{1000 / required:.0f} messages/s on one store process"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=2000)
    parser.add_argument("--reps", type=int, default=100)
    parser.add_argument(
        "--echo-share", type=float, default=0.3, help="owner share of the messages (bench.ingest's mix)"
    )
    asyncio.run(main(parser.parse_args()))
