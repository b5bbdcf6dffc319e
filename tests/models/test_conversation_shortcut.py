"""Applying a message to a remembered conversation state without reading it back
(models/conversations.applied_to_known, models/group_commit.Shortcut), against the real store.

The read-free path must store and return exactly what the update pipeline and its read-back
give: the same random message sequences go through a repository that remembers states and
through one that never does, and every document must agree. A write the repository did not
see (another process) makes the shortcut miss; the result is then read back, and still right.
"""

from __future__ import annotations

import datetime as dt
import random
import uuid
from typing import Any

import pytest
from bson import ObjectId

from models.conversations import ConversationRepository, copy_tree
from models.timeutil import utcnow
from tests.support.commands import Commands

# Fields that differ by construction between two conversations given the same messages.
PER_DOCUMENT = {"_id", "rev", "created_at", "updated_at", "last_apply", "customer_id", "customer_instagram_id"}


async def new_conversation(repo: ConversationRepository, channel: ObjectId) -> dict[str, Any]:
    customer = {"_id": ObjectId(), "instagram_id": uuid.uuid4().hex[:16], "first_name": "Ann"}
    doc, created = await repo.get_or_create(channel, customer)
    assert created
    return doc


def random_messages(rng: random.Random, channel: ObjectId, count: int) -> list[dict[str, Any]]:
    """Customer and owner messages, some late (older than the newest), some imported history."""
    start = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)
    messages = []
    for n in range(count):
        sent = start + dt.timedelta(seconds=rng.choice([n * 10, n * 10, rng.randrange(0, max(1, n * 10))]))
        inbound = rng.random() < 0.6
        message = {
            "_id": ObjectId(),
            "channel_id": channel,
            "type": "customer" if inbound else "support",
            "content": f"message {n}",
            "message_type": "text",
            "sent_at": sent,
            "created_at": utcnow(),
        }
        if inbound and rng.random() < 0.1:
            message["imported"] = "backfill"
        messages.append(message)
    return messages


def customer_messages(channel: ObjectId, count: int) -> list[dict[str, Any]]:
    messages = random_messages(random.Random(0), channel, count)
    for message in messages:
        message["type"] = "customer"
        message.pop("imported", None)
    return messages


def comparable(doc: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in doc.items() if k not in PER_DOCUMENT}
    out["last_apply_prev_status"] = (doc.get("last_apply") or {}).get("prev_status")
    out["customer"] = {k: v for k, v in (doc.get("customer") or {}).items() if k not in ("id", "instagram_id")}
    return out


@pytest.mark.parametrize("client_bulk_write", [True, False], ids=["one-command", "shortcut-alone"])
@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_the_read_free_apply_stores_and_returns_what_the_pipeline_does(
    db: tuple[Any, Commands], seed: int, client_bulk_write: bool
) -> None:
    database, commands = db
    channel = ObjectId()
    remembering = ConversationRepository(database)
    remembering.use_client_bulk_write(client_bulk_write)
    forgetting = ConversationRepository(database, known_states=0)  # the pipeline and its read-back, always
    fast, plain = await new_conversation(remembering, channel), await new_conversation(forgetting, channel)
    messages = random_messages(random.Random(seed), channel, 40)
    shortcut_hits = 0
    for message in messages:
        commands.seen.clear()
        got = await remembering.apply_message(fast["_id"], dict(message))
        shortcut_hits += commands.seen == ({"bulkWrite": 1} if client_bulk_write else {"update": 1})
        expected = await forgetting.apply_message(plain["_id"], dict(message))
        assert got is not None and expected is not None
        stored = await database.conversations.find_one({"_id": fast["_id"]})
        # What it returns is the stored document (plus prev_status), and the same as the pipeline's.
        assert {k: v for k, v in got.items() if k != "prev_status"} == stored
        assert got["prev_status"] == expected["prev_status"]
        assert comparable(stored) == comparable(await database.conversations.find_one({"_id": plain["_id"]}))
        # A repeat is recognised (applied before) by either path.
        assert await remembering.apply_message(fast["_id"], dict(message)) is None
    # Every apply after the first remembered state went without a read.
    assert shortcut_hits == len(messages)


@pytest.mark.parametrize("client_bulk_write", [True, False], ids=["one-command", "shortcut-alone"])
async def test_a_write_the_repository_did_not_see_makes_it_read_back(
    db: tuple[Any, Commands], client_bulk_write: bool
) -> None:
    database, commands = db
    channel = ObjectId()
    mine, other_process = ConversationRepository(database), ConversationRepository(database)
    mine.use_client_bulk_write(client_bulk_write)
    conversation = await new_conversation(mine, channel)
    first, second = customer_messages(channel, 2)
    assert await mine.apply_message(conversation["_id"], first) is not None
    # Another process marks the thread read and renames the customer.
    await other_process.mark_read(conversation["_id"], channel)
    await other_process.touch(conversation["_id"], {"customer.first_name": "Bea"}, channel)

    commands.seen.clear()
    after = await mine.apply_message(conversation["_id"], second)

    assert commands.seen["find"] == 1  # the remembered state was stale: read back
    assert after is not None and after["unread_count"] == 1 and after["customer"]["first_name"] == "Bea"
    assert {k: v for k, v in after.items() if k != "prev_status"} == await database.conversations.find_one(
        {"_id": conversation["_id"]}
    )


async def test_a_write_behind_the_repositorys_back_still_leaves_the_stored_counts_right(
    db: tuple[Any, Commands],
) -> None:
    """A write that does not stamp a new ``rev`` (a hand edit in the database) is not seen by
    the remembered state; the shortcut's filter still holds the state it decided on, so the
    stored document stays what the pipeline would make of it."""
    database, _ = db
    channel = ObjectId()
    repo = ConversationRepository(database)
    conversation = await new_conversation(repo, channel)
    first, second = customer_messages(channel, 2)
    await repo.apply_message(conversation["_id"], first)
    await database.conversations.update_one({"_id": conversation["_id"]}, {"$set": {"unread_count": 5}})

    after = await repo.apply_message(conversation["_id"], second)

    stored = await database.conversations.find_one({"_id": conversation["_id"]})
    assert stored["unread_count"] == 6 and after is not None and after["unread_count"] == 6


# Methods that write no conversation (readers, and the switch of how writes are sent).
READERS = {"ensure_indexes", "get", "get_many", "find_by_customer", "page", "remembered_with", "use_client_bulk_write"}
# Write nothing themselves: the update of ``known_apply`` is sent by the message's insert
# (server/ingest/recorder.py); the writer "known_apply" below sends it as that insert does.
KNOWN_APPLY_PARTS = {"as_update", "after_known_apply"}


async def send_known_apply(
    repo: ConversationRepository, channel: ObjectId, customer: dict[str, Any], message: dict[str, Any]
) -> Any:
    # The unique index makes it find the stored conversation, and remember its state.
    conversation, created = await repo.get_or_create(channel, customer)
    assert not created
    shortcut = repo.known_apply(conversation["_id"], message)
    assert shortcut is not None, "the state written just before is remembered"
    update = repo.as_update(shortcut)
    sent = await repo.coll.update_one(update._filter, update._doc)
    return repo.after_known_apply(shortcut, sent.matched_count > 0)


async def test_every_write_to_a_conversation_stamps_a_new_rev(db: tuple[Any, Commands]) -> None:
    """A remembered state is trusted while the stored ``rev`` is its own: each writer must
    change it. A new public method is either a reader (listed) or a writer tried here."""
    database, _ = db
    channel = ObjectId()
    repo = ConversationRepository(database)
    await repo.ensure_indexes()
    conversation = await new_conversation(repo, channel)
    conversation_id = conversation["_id"]
    message = customer_messages(channel, 1)[0]
    edited = {**message, "content": "edited"}
    later = customer_messages(channel, 2)[1]
    customer = {"_id": conversation["customer_id"], "instagram_id": conversation["customer_instagram_id"]}
    writers = {
        "get_or_create": lambda: repo.get_or_create(channel, {"_id": ObjectId(), "instagram_id": "someone else"}),
        "apply_message": lambda: repo.apply_message(conversation_id, message),
        "touch": lambda: repo.touch(conversation_id, {"status": "answered"}, channel),
        "mark_read": lambda: repo.mark_read(conversation_id, channel),
        "refresh_customer": lambda: repo.refresh_customer(channel, {**customer, "first_name": "Cy"}),
        "refresh_last_message": lambda: repo.refresh_last_message(conversation_id, message),
        "refresh_summary_if_stale": lambda: repo.refresh_summary_if_stale(conversation_id, edited),
        "known_apply": lambda: send_known_apply(repo, channel, customer, later),
    }
    public = {
        name
        for name in dir(ConversationRepository)
        if not name.startswith("_") and callable(getattr(ConversationRepository, name))
    }
    assert public == READERS | KNOWN_APPLY_PARTS | set(writers), (
        "a new method: list it as a reader or try it as a writer"
    )
    assert conversation.get("rev") is not None
    for name, write in writers.items():
        before = await database.conversations.find_one({"_id": conversation_id})
        result = await write()
        if name == "get_or_create":
            assert result[0]["rev"] is not None and result[0]["_id"] != conversation_id
            continue
        after = await database.conversations.find_one({"_id": conversation_id})
        assert after["rev"] != before["rev"], f"{name} did not stamp a new rev"


def test_a_remembered_state_is_a_copy_of_every_container_and_shares_the_leaves() -> None:
    stamp_at, token = utcnow(), ObjectId()
    doc = {"_id": ObjectId(), "last_apply": {"token": token, "at": stamp_at}, "recent_message_ids": [ObjectId()]}
    kept = copy_tree(doc)
    assert kept == doc
    # A caller changing its document in place, at any depth, leaves the copy as it was.
    doc["last_apply"]["token"] = ObjectId()
    doc["recent_message_ids"].append(ObjectId())
    doc["status"] = "open"
    assert kept["last_apply"]["token"] is token and len(kept["recent_message_ids"]) == 1 and "status" not in kept
    assert kept["last_apply"]["at"] is stamp_at  # immutable values are shared, not copied
