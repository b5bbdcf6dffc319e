"""The shard plan (models/sharding.py) holds: every unique index starts with its collection's
shard key, every collection is planned, and every MongoDB command of the hot paths — webhooks,
mark-sent, sending, a socket's resume, the inbox REST API — names its collection's shard key
(recorded by a command listener on a real server)."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest
from bson import ObjectId
from pymongo import monitoring
from pymongo.errors import DuplicateKeyError

from models import diagnostics
from models.sharding import (
    SHARD_PLAN,
    NotSharded,
    Sharded,
    client_bulk_write_parts,
    is_cross_channel_scan,
    names_shard_key,
    shard_commands,
)
from models.store import Store, mongo_client
from models.timeutil import utcnow
from models.trigger_jobs import TriggerJobRepository, mark_for_triggers
from tests.support.dedup import mark_sent
from tests.support.events import EventsEnv, events_env
from tests.support.helpers import CUSTOMER_A, body_of, echo_item, messaging_body, text_item, wait_for
from tests.support.realtime import WsClient


class Recorder(monitoring.CommandListener):
    """Every command sent, with its collection, while ``on``."""

    def __init__(self) -> None:
        self.on = False
        self.commands: list[tuple[str, str, dict[str, Any]]] = []
        self.bulk_writes = 0

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if self.on:
            collection = event.command.get(event.command_name)
            if isinstance(collection, str):
                self.commands.append((event.command_name, collection, dict(event.command)))
            elif event.command_name == "bulkWrite":  # several collections: each part checked
                self.bulk_writes += 1
                self.commands.extend(client_bulk_write_parts(event.command))

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        return None

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        return None


def untargeted(recorder: Recorder) -> list[str]:
    out = []
    for name, collection, command in recorder.commands:
        plan = SHARD_PLAN.get(collection)
        if is_cross_channel_scan(collection, name, command):
            continue
        if isinstance(plan, Sharded) and not names_shard_key(name, command, plan.key):
            shown = {k: v for k, v in command.items() if k not in ("lsid", "$db", "$clusterTime", "txnNumber")}
            out.append(f"{collection}.{name}: {orjson.dumps(shown, default=str).decode()[:300]}")
    return out


@pytest.mark.parametrize("client_bulk_write", [True, False], ids=["mongodb-8", "embedded-store"])
async def test_every_hot_path_command_names_the_shard_key(stores: Any, tmp_path: Path, client_bulk_write: bool) -> None:
    recorder = Recorder()
    async with events_env(
        stores, tmp_path, realtime=True, mongo_listeners=[recorder], send_poll_secs=0.1, send_retry_base_secs=0.05
    ) as env:
        # The commands MongoDB 8.0+ gets (client bulkWrites) and the embedded store's.
        env.core.store.messages.use_client_bulk_write(client_bulk_write)
        env.core.store.conversations.use_client_bulk_write(client_bulk_write)
        await _hot_paths(env, recorder)
    problems = untargeted(recorder)
    # The hot paths ran (each of their commands is one below; fewer as they get cheaper).
    assert len(recorder.commands) > 40
    # A lone message's insert and probe, a conversation's update: checked part by part.
    assert (recorder.bulk_writes > 0) is client_bulk_write
    assert problems == [], "\n".join(problems)


async def _hot_paths(env: EventsEnv, recorder: Recorder) -> None:
    client = env.client
    ws = await WsClient.connect(env.server.base_url, env.token)
    subscribed = await ws.subscribe(channel_id=env.channel["id"])
    recorder.on = True
    # Webhooks: a customer's text, the owner's reply typed in the Instagram app, a reaction, a read.
    stamp = time.time_ns()
    await env.post(messaging_body(text_item(f"m_c_{stamp}", "hello", sender=CUSTOMER_A)))
    await env.post(messaging_body(echo_item(f"m_e_{stamp}", "typed in the app")))
    # mark-sent, then its echo (a duplicate).
    assert (await mark_sent(client, "from the AI", mids=[f"m_ai_{stamp}"])).code == 201
    await env.post(messaging_body(echo_item(f"m_ai_{stamp}", "from the AI")))
    # The inbox REST API.
    conversations = body_of(await client.get("/api/v1/conversations", token=env.token))["conversations"]
    conversation_id = conversations[0]["id"]
    page = await client.get(f"/api/v1/conversations/{conversation_id}/messages", token=env.token)
    assert page.code == 200
    assert (await client.get(f"/api/v1/conversations/{conversation_id}", token=env.token)).code == 200
    # Sending through igsync: stored, sent by the worker, its echo a duplicate.
    sent = await client.post(
        f"/api/v1/conversations/{conversation_id}/messages", {"content": "on its way"}, token=env.token
    )
    assert sent.code == 202, sent.body
    message_id = body_of(sent)["message"]["id"]

    async def delivered() -> bool:
        doc = await env.core.store.messages.coll.find_one({"_id": ObjectId(message_id)})
        return bool(doc and doc.get("delivery_status") == "sent")

    recorder.on = False
    await wait_for(delivered, timeout=15)
    recorder.on = True
    # A socket resumes from where it was.
    again = await WsClient.connect(env.server.base_url, env.token)
    await again.subscribe(channel_id=env.channel["id"], since_seq=subscribed["latest_seq"], epoch=subscribed["epoch"])
    await again.events(3)
    recorder.on = False
    for socket in (ws, again):
        socket.close()


async def test_the_trigger_dispatchers_poll_is_a_queue_scan_and_its_clearing_names_the_channels(
    stores: Any,
) -> None:
    """The dispatcher polls marked messages across channels (a queue scan on a partial index,
    like the send queue), then clears the marks it took naming their channels."""
    recorder = Recorder()
    client = mongo_client(stores.mongo_url or "", listeners=[recorder])
    db = client[f"shard_{uuid.uuid4().hex[:12]}"]
    try:
        repo = TriggerJobRepository(db)
        await repo.ensure_indexes()
        for channel in (ObjectId(), ObjectId()):
            message = {"channel_id": channel, "conversation_id": ObjectId(), "created_at": utcnow()}
            mark_for_triggers(message, ["http"])
            await db["messages"].insert_one(message)
        recorder.on = True
        assert await repo.materialize(limit=10) == 2
        assert await repo.count_marked() == 0
        recorder.on = False
        names = [(name, collection) for name, collection, _ in recorder.commands]
        assert ("find", "messages") in names and ("update", "messages") in names
        assert untargeted(recorder) == []
    finally:
        await client.drop_database(db.name)
        await client.close()


async def test_every_unique_index_starts_with_the_shard_key() -> None:
    store = Store("mongodb://127.0.0.1:9", "plan")  # never contacted: the plan is read offline
    planned = await diagnostics.planned_indexes(store)
    await store.close()
    assert planned, "the index plan was read"
    problems = []
    for index in planned:
        plan = SHARD_PLAN.get(index.collection)
        assert plan is not None, f"{index.collection} has no entry in SHARD_PLAN"
        if isinstance(plan, Sharded) and index.unique:
            fields = [field for field, _ in index.keys]
            if tuple(fields[: len(plan.key)]) != plan.key:
                problems.append(str(index))
    assert problems == []


def test_every_collection_is_planned_and_commands_are_well_formed() -> None:
    commands = shard_commands("igsync")
    assert commands[0] == {"enableSharding": "igsync"}
    sharded = {c["shardCollection"] for c in commands[1:]}
    assert "igsync.messages" in sharded and "igsync.channels" not in sharded
    assert all(isinstance(p, (Sharded, NotSharded)) and p.why for p in SHARD_PLAN.values())


def test_names_shard_key() -> None:
    key = ("channel_id",)
    assert names_shard_key("find", {"filter": {"channel_id": 1, "x": 2}}, key)
    assert names_shard_key("find", {"filter": {"channel_id": {"$in": [1, 2]}}}, key)
    assert not names_shard_key("find", {"filter": {"_id": 1}}, key)
    assert not names_shard_key("find", {"filter": {"channel_id": {"$gt": 1}}}, key)
    assert names_shard_key("update", {"updates": [{"q": {"channel_id": 1}}]}, key)
    assert not names_shard_key("update", {"updates": [{"q": {"channel_id": 1}}, {"q": {"_id": 2}}]}, key)
    assert names_shard_key("insert", {"documents": [{"channel_id": 1}]}, key)
    assert not names_shard_key("insert", {"documents": [{"_id": 1}]}, key)
    assert names_shard_key("aggregate", {"pipeline": [{"$match": {"channel_id": 1}}, {"$group": {}}]}, key)
    assert not names_shard_key("aggregate", {"pipeline": [{"$group": {}}]}, key)
    assert names_shard_key("getMore", {}, key)


async def test_an_older_database_gets_the_prefixed_unique_indexes_and_loses_the_old_ones(stores: Any) -> None:
    """A database made by an earlier version (single-field unique keys, which a sharded cluster
    refuses): the next start creates the channel-prefixed ones, then drops the old."""
    store = Store(stores.mongo_url or "", "t_" + uuid.uuid4().hex[:12])
    try:
        await store.db.messages.create_index([("mid_keys", 1)], unique=True, name="mid_keys_unique")
        await store.db.orphan_events.create_index([("key", 1)], unique=True, name="key_unique")
        await store.ensure_indexes()
        messages = await store.db.messages.index_information()
        orphans = await store.db.orphan_events.index_information()
        assert "mid_keys_unique" not in messages and "key_unique" not in orphans
        assert messages["channel_mid_keys_unique"]["key"] == [("channel_id", 1), ("mid_keys", 1)]
        assert orphans["channel_key_unique"]["unique"] is True
        # And they hold: the same mid twice on a channel is refused, on another channel it is not.
        channel, other = ObjectId(), ObjectId()
        await store.db.messages.insert_one({"channel_id": channel, "mid_keys": [f"{channel}:m1"]})
        with pytest.raises(DuplicateKeyError):
            await store.db.messages.insert_one({"channel_id": channel, "mid_keys": [f"{channel}:m1"]})
        await store.db.messages.insert_one({"channel_id": other, "mid_keys": [f"{channel}:m1"]})
    finally:
        await store.client.drop_database(store.db.name)
        await store.close()


async def test_an_update_read_back_names_the_shard_key_of_its_update(stores: Any) -> None:
    """``update_get`` reads the document back by the keys its update used: a customer's profile
    update (after a new customer's look-up) read back by ``_id`` alone went to every shard."""
    recorder = Recorder()
    store = Store(stores.mongo_url, f"readback_{uuid.uuid4().hex[:8]}", listeners=[recorder])
    try:
        customer, _ = await store.customers.get_or_create(ObjectId(), "17841499999999999")
        recorder.on = True
        updated = await store.customers.update_profile(
            customer["_id"], {"name": "Ana"}, channel_id=customer["channel_id"]
        )
        recorder.on = False
        assert updated is not None and updated["name"] == "Ana"
        assert untargeted(recorder) == []
        assert [name for name, _, _ in recorder.commands] == ["update", "find"]
    finally:
        await store.client.drop_database(store.db.name)
        await store.close()
