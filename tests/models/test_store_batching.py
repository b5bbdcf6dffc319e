"""Group commit for updates and look-ups (models/group_commit.py), against the real embedded
store: concurrent callers share commands, and each still gets its own, correct outcome.

The batching is "natural" (no timer): the writer task starts on the loop's next turn and
takes whatever has queued by then; callers that queue while a command is in flight go
together in the next one. The tests start their callers in one event-loop turn, so they
all queue before the first command — the command counts do not depend on the machine.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import pytest
from bson import ObjectId
from pymongo import UpdateMany, UpdateOne
from pymongo.errors import DuplicateKeyError, OperationFailure

from models.conversations import STATUS_ANSWERED, STATUS_NEEDS_REPLY, ConversationRepository
from models.group_commit import (
    GroupFinder,
    GroupManyUpdater,
    GroupUpdate,
    GroupUpdater,
    GuardFailed,
    Inserted,
    LeadInsert,
    LeadRefused,
)
from models.messages import MessageRepository, is_mid_conflict
from models.orphan_events import OrphanEventRepository
from tests.support.commands import Commands


def bump(doc_id: ObjectId, *, guard: dict[str, Any] | None = None) -> tuple[GroupUpdate, ObjectId]:
    """Add one to ``n`` and leave this call's token in the document."""
    token = ObjectId()
    op = GroupUpdate(
        doc_id,
        {"_id": doc_id, **(guard or {})},
        [{"$set": {"n": {"$add": ["$n", 1]}, "token": {"$literal": token}}}],
        is_mine=lambda doc: doc.get("token") == token,
    )
    return op, token


async def test_concurrent_updates_share_commands_and_each_sees_its_own_write(db: tuple[Any, Commands]) -> None:
    database, commands = db
    ids = [ObjectId() for _ in range(12)]
    await database.things.insert_many([{"_id": oid, "n": 0} for oid in ids])
    updater = GroupUpdater(database.things)
    commands.seen.clear()

    ops = [bump(oid) for oid in ids]
    outcomes = await asyncio.gather(*(updater.update(op) for op, _ in ops))

    for (_, token), oid, outcome in zip(ops, ids, outcomes, strict=True):
        assert outcome.applied and outcome.own_mark
        assert outcome.doc is not None and outcome.doc["_id"] == oid
        assert outcome.doc["n"] == 1 and outcome.doc["token"] == token
    # 12 lone updates would be 12 updates + 12 reads.
    assert commands.seen["update"] == 1 and commands.seen["find"] == 1
    assert await database.things.count_documents({"n": 1}) == 12


async def test_two_updates_of_one_document_never_share_a_batch(db: tuple[Any, Commands]) -> None:
    database, commands = db
    oid, other = ObjectId(), ObjectId()
    await database.things.insert_many([{"_id": oid, "n": 0}, {"_id": other, "n": 0}])
    updater = GroupUpdater(database.things)
    commands.seen.clear()

    ops = [bump(oid), bump(other), bump(oid), bump(oid)]
    outcomes = await asyncio.gather(*(updater.update(op) for op, _ in ops))

    # Each saw its own mark: the read-back of its batch came before the next write.
    assert all(o.applied and o.own_mark for o in outcomes)
    assert sorted(o.doc["n"] for o in outcomes if o.doc and o.doc["_id"] == oid) == [1, 2, 3]
    assert (await database.things.find_one({"_id": oid}))["n"] == 3
    # [oid, other], then [oid], then [oid]: three batches.
    assert commands.seen["update"] == 3


async def test_an_update_whose_guard_fails_reports_not_applied(db: tuple[Any, Commands]) -> None:
    database, _ = db
    applies, refuses, missing = ObjectId(), ObjectId(), ObjectId()
    await database.things.insert_many([{"_id": applies, "n": 0}, {"_id": refuses, "n": 0, "locked": True}])
    updater = GroupUpdater(database.things)

    first, second, third = await asyncio.gather(
        updater.update(bump(applies, guard={"locked": {"$ne": True}})[0]),
        updater.update(bump(refuses, guard={"locked": {"$ne": True}})[0]),
        updater.update(bump(missing)[0]),
    )

    assert first.applied and first.own_mark
    assert not second.applied and not second.own_mark and second.doc == {"_id": refuses, "n": 0, "locked": True}
    assert not third.applied and third.doc is None


async def test_a_match_without_a_visible_mark_counts_as_applied(db: tuple[Any, Commands]) -> None:
    """Another process overwrote the mark between the write and the read-back: the batch's
    match count says an update applied that no mark explains, so the caller is told
    ``applied`` without ``own_mark`` and assumes the least about what it wrote over."""
    database, _ = db
    oid = ObjectId()
    await database.things.insert_one({"_id": oid, "n": 0})
    updater = GroupUpdater(database.things)
    overwritten = GroupUpdate(oid, {"_id": oid}, {"$inc": {"n": 1}}, is_mine=lambda doc: False)

    outcome = await updater.update(overwritten)

    assert outcome.applied and not outcome.own_mark
    assert outcome.doc is not None and outcome.doc["n"] == 1


async def test_a_failing_statement_fails_only_its_caller(db: tuple[Any, Commands]) -> None:
    database, _ = db
    good, bad, first = ObjectId(), ObjectId(), ObjectId()
    await database.things.insert_many([{"_id": good, "n": 0}, {"_id": bad, "n": "text"}, {"_id": first, "n": 0}])
    updater = GroupUpdater(database.things)
    invalid = GroupUpdate(bad, {"_id": bad}, {"$inc": {"n": 1}}, is_mine=lambda doc: False)

    results = await asyncio.gather(
        updater.update(bump(first)[0]),
        updater.update(bump(good)[0]),
        updater.update(invalid),
        return_exceptions=True,
    )

    assert not isinstance(results[0], BaseException) and results[0].applied
    assert not isinstance(results[1], BaseException) and results[1].applied and results[1].own_mark
    assert isinstance(results[2], OperationFailure)
    assert (await database.things.find_one({"_id": good}))["n"] == 1


async def test_concurrent_multi_updates_share_one_command_and_a_failing_one_fails_alone(
    db: tuple[Any, Commands],
) -> None:
    database, commands = db
    await database.things.insert_many(
        [{"group": g, "n": 0, "open": True} for g in ("a", "a", "b", "c")] + [{"group": "bad", "n": "text"}]
    )
    updater = GroupManyUpdater(database.things)
    commands.seen.clear()

    results = await asyncio.gather(
        updater.update_many({"group": "a", "open": True}, {"$set": {"open": False}}),
        updater.update_many({"group": "b"}, {"$inc": {"n": 1}}),
        updater.update_many({"group": "bad"}, {"$inc": {"n": 1}}),
        updater.update_many({"group": "c"}, {"$inc": {"n": 1}}),
        return_exceptions=True,
    )

    assert commands.seen["update"] == 1  # one bulk write for the four callers
    assert results[0] is None and results[1] is None and results[3] is None
    assert isinstance(results[2], OperationFailure)
    assert await database.things.count_documents({"group": "a", "open": False}) == 2
    assert [d["n"] for d in await database.things.find({"group": {"$in": ["b", "c"]}}).to_list(None)] == [1, 1]


async def test_concurrent_lookups_share_one_query_per_scope(db: tuple[Any, Commands]) -> None:
    database, commands = db
    scope_a, scope_b = ObjectId(), ObjectId()
    await database.events.insert_many(
        [{"scope": scope_a, "key": f"m{i}", "i": i} for i in range(6)] + [{"scope": scope_b, "key": "m1", "i": 100}]
    )
    finder = GroupFinder(database.events, "key", scope_field="scope")
    commands.seen.clear()

    lone, *batched = await asyncio.gather(
        finder.find(["m0"], scope_a),
        finder.find(["m1", "m2"], scope_a),
        finder.find(["m9"], scope_a),
        finder.find(["m1"], scope_b),
        finder.find(["m2", "m3"], scope_a),
    )

    assert [r["i"] for r in lone] == [0]
    assert sorted(r["i"] for r in batched[0]) == [1, 2]
    assert batched[1] == []
    assert [r["i"] for r in batched[2]] == [100]  # the same key in another scope stays apart
    assert sorted(r["i"] for r in batched[3]) == [2, 3]
    # One query for each of the two scopes.
    assert commands.seen["find"] == 2
    assert await finder.find([], scope_a) == [] and commands.seen["find"] == 2


async def test_apply_message_reports_prev_status_exactly_when_its_mark_is_visible(
    db: tuple[Any, Commands],
) -> None:
    """The conversation update is batched; ``prev_status`` (whether an outbound message may
    answer waiting customer messages) comes from the update's own mark."""
    database, _ = db
    conversations = ConversationRepository(database)
    now = dt.datetime.now(dt.UTC)
    conv_ids = [ObjectId() for _ in range(3)]
    channel_id = ObjectId()
    await database.conversations.insert_many(
        [
            {
                "_id": oid,
                "channel_id": channel_id,
                "status": STATUS_NEEDS_REPLY if i else STATUS_ANSWERED,
                "unread_count": 2,
                "last_message": None,
                "last_message_at": now - dt.timedelta(minutes=1),
                "recent_message_ids": [],
            }
            for i, oid in enumerate(conv_ids)
        ]
    )

    def outbound(sent_at: dt.datetime) -> dict[str, Any]:
        return {
            "_id": ObjectId(),
            "channel_id": channel_id,
            "type": "support",
            "content": "hi",
            "sent_at": sent_at,
            "created_at": now,
        }

    late = outbound(now - dt.timedelta(hours=1))
    applied = await asyncio.gather(
        conversations.apply_message(conv_ids[0], outbound(now)),
        conversations.apply_message(conv_ids[1], outbound(now)),
        conversations.apply_message(conv_ids[2], late),
    )

    assert [a["prev_status"] for a in applied if a] == [STATUS_ANSWERED, STATUS_NEEDS_REPLY, STATUS_NEEDS_REPLY]
    assert applied[1] is not None and applied[1]["status"] == STATUS_ANSWERED and applied[1]["unread_count"] == 0
    # The late message is recorded but does not become the last one, nor answer the thread.
    assert applied[2] is not None and applied[2]["status"] == STATUS_NEEDS_REPLY and applied[2]["last_message"] is None
    # Applying the same message again is a no-op that says so.
    assert await conversations.apply_message(conv_ids[2], late) is None


async def test_lookups_on_an_array_field_find_each_callers_documents(db: tuple[Any, Commands]) -> None:
    """Messages are found by any of their ``mid_keys``: a batch's rows go to every caller
    one of whose keys the row holds."""
    database, commands = db
    await database.messages.insert_many(
        [{"mid_keys": ["c:a", "c:b"], "i": 1}, {"mid_keys": ["c:c"], "i": 2}, {"mid_keys": ["d:a"], "i": 3}]
    )
    finder = GroupFinder(database.messages, "mid_keys")
    commands.seen.clear()

    by_a, by_b, by_c, by_none = await asyncio.gather(
        finder.find(["c:a"]), finder.find(["c:b"]), finder.find(["c:c"]), finder.find(["c:z"])
    )

    assert [r["i"] for r in by_a] == [1] and [r["i"] for r in by_b] == [1]
    assert [r["i"] for r in by_c] == [2] and by_none == []
    assert commands.seen["find"] == 1


async def test_apply_message_counts_an_inbound_message_on_a_conversation_without_counters(
    db: tuple[Any, Commands],
) -> None:
    """A conversation written by an older version (no unread count, no applied ids yet)."""
    database, _ = db
    conversations = ConversationRepository(database)
    oid, now, channel_id = ObjectId(), dt.datetime.now(dt.UTC), ObjectId()
    await database.conversations.insert_one({"_id": oid, "channel_id": channel_id, "status": STATUS_ANSWERED})
    inbound = {"_id": ObjectId(), "channel_id": channel_id, "type": "customer", "content": "hello", "sent_at": now}
    inbound["created_at"] = now

    after = await conversations.apply_message(oid, inbound)

    assert after is not None
    assert (after["unread_count"], after["status"], after["recent_message_ids"]) == (
        1,
        STATUS_NEEDS_REPLY,
        [inbound["_id"]],
    )
    assert after["last_message"]["content"] == "hello"


async def test_a_committer_that_fails_unexpectedly_answers_its_callers(db: tuple[Any, Commands]) -> None:
    """An error outside the store call (here: the caller's own mark check) reaches the callers
    of that batch instead of leaving them waiting, and later callers are served."""
    database, _ = db
    oid = ObjectId()
    await database.things.insert_one({"_id": oid, "n": 0})
    updater = GroupUpdater(database.things)

    def broken(doc: dict[str, Any]) -> bool:
        raise LookupError("mark check failed")

    with pytest.raises(LookupError):
        await asyncio.wait_for(updater.update(GroupUpdate(oid, {"_id": oid}, {"$inc": {"n": 1}}, broken)), 30)
    outcome = await asyncio.wait_for(updater.update(bump(oid)[0]), 30)
    assert outcome.applied and outcome.own_mark and outcome.doc is not None and outcome.doc["n"] == 2


# -- a lone insert with its probe (one bulkWrite) ---------------------------------------------

Repos = tuple[MessageRepository, OrphanEventRepository]


@pytest.fixture
async def repos(db: tuple[Any, Commands]) -> Repos:
    database, _ = db
    messages, orphans = MessageRepository(database), OrphanEventRepository(database)
    messages.use_client_bulk_write(True)  # as on MongoDB 8.0+ (models/store.Store.adapt_to_server)
    await messages.ensure_indexes()
    await orphans.ensure_indexes()
    return messages, orphans


async def insert_probing(repos: Repos, channel: ObjectId, mid: str) -> bool | None:
    """Insert a message of ``mid`` with the probe for its early events."""
    messages, orphans = repos
    return await messages.insert(_message(channel, mid), probe=orphans.arrival_probe(channel, [mid]))


async def test_a_lone_insert_asks_its_probe_in_the_same_command(db: tuple[Any, Commands], repos: Repos) -> None:
    database, commands = db
    channel = ObjectId()
    await database.orphan_events.insert_one({"channel_id": channel, "key": "k1", "target_mid": "m.early"})
    commands.seen.clear()

    early = await insert_probing(repos, channel, "m.early")
    none = await insert_probing(repos, channel, "m.alone")

    assert early is True and none is False
    assert dict(commands.seen) == {"bulkWrite": 2}  # no insert, no find: one command each
    # The probe wrote nothing to the event it matched.
    assert await database.orphan_events.find_one({"key": "k1"}, {"_id": 0}) == {
        "channel_id": channel,
        "key": "k1",
        "target_mid": "m.early",
    }
    assert await database.messages.count_documents({}) == 2


async def test_a_lone_duplicate_raises_the_mid_conflict_and_skips_the_probe(
    db: tuple[Any, Commands], repos: Repos
) -> None:
    database, _ = db
    channel = ObjectId()
    await repos[0].insert(_message(channel, "m.twice"))
    with pytest.raises(DuplicateKeyError) as raised:
        await insert_probing(repos, channel, "m.twice")
    assert is_mid_conflict(raised.value)
    assert await database.messages.count_documents({}) == 1


async def test_inserts_that_share_a_batch_answer_none_and_are_all_stored(
    db: tuple[Any, Commands], repos: Repos
) -> None:
    database, commands = db
    channel = ObjectId()
    await repos[0].insert(_message(channel, "m.b1"))
    commands.seen.clear()
    mids = ["m.b1", "m.b2", "m.b3"]  # the first is a duplicate: it fails alone
    outcomes = await asyncio.gather(*(insert_probing(repos, channel, mid) for mid in mids), return_exceptions=True)
    assert isinstance(outcomes[0], DuplicateKeyError) and outcomes[1:] == [None, None]
    assert dict(commands.seen) == {"insert": 1}
    assert await database.messages.count_documents({}) == 3


# -- a lead insert ahead of the message (the echo's pairing claim) ----------------------------


def claim(database: Any, key: str) -> LeadInsert:
    return LeadInsert(database.echo_pairs, {"_id": key, "version": 1})


async def test_a_lone_insert_sends_its_lead_in_the_same_command_and_is_refused_with_it(
    db: tuple[Any, Commands], repos: Repos
) -> None:
    database, commands = db
    channel, (messages, orphans) = ObjectId(), repos
    commands.seen.clear()
    early = await messages.insert(
        _message(channel, "m.led"), probe=orphans.arrival_probe(channel, ["m.led"]), lead=claim(database, "k")
    )
    assert early is False
    assert dict(commands.seen) == {"bulkWrite": 1}
    assert await database.echo_pairs.count_documents({"_id": "k"}) == 1

    # The lead is refused (its document exists): nothing else is written.
    with pytest.raises(LeadRefused) as raised:
        await messages.insert(_message(channel, "m.second"), lead=claim(database, "k"))
    assert isinstance(raised.value.failure, DuplicateKeyError)
    assert not is_mid_conflict(raised.value.failure)
    assert await database.messages.count_documents({}) == 1

    # A duplicate message after a lead that succeeded: the message's own conflict.
    with pytest.raises(DuplicateKeyError) as conflict:
        await messages.insert(_message(channel, "m.led"), lead=claim(database, "k2"))
    assert is_mid_conflict(conflict.value)


async def test_leads_of_a_batch_go_first_and_a_refused_one_keeps_its_message_out(
    db: tuple[Any, Commands], repos: Repos
) -> None:
    database, commands = db
    channel, messages = ObjectId(), repos[0]
    await database.echo_pairs.insert_one({"_id": "taken"})
    commands.seen.clear()
    outcomes = await asyncio.gather(
        messages.insert(_message(channel, "m.1"), lead=claim(database, "free1")),
        messages.insert(_message(channel, "m.2"), lead=claim(database, "taken")),
        messages.insert(_message(channel, "m.3")),
        messages.insert(_message(channel, "m.4"), lead=claim(database, "free2")),
        return_exceptions=True,
    )
    assert outcomes[0] is None and outcomes[2] is None and outcomes[3] is None
    assert isinstance(outcomes[1], LeadRefused) and isinstance(outcomes[1].failure, DuplicateKeyError)
    assert dict(commands.seen) == {"insert": 2}  # the leads in one, then the messages in one
    assert sorted(m["mid"] for m in await database.messages.find().to_list(None)) == ["m.1", "m.3", "m.4"]
    assert await database.echo_pairs.count_documents({}) == 3


async def test_without_client_bulk_write_the_lead_and_the_message_go_one_after_the_other(
    db: tuple[Any, Commands], repos: Repos
) -> None:
    """MongoDB < 8.0 (no client bulkWrite): the same order and outcomes in separate commands."""
    database, commands = db
    channel, messages = ObjectId(), repos[0]
    messages._inserter.client_bulk_write = False
    commands.seen.clear()
    assert await messages.insert(_message(channel, "m.old"), lead=claim(database, "k")) is None
    with pytest.raises(LeadRefused):
        await messages.insert(_message(channel, "m.refused"), lead=claim(database, "k"))
    assert dict(commands.seen) == {"insert": 3}
    assert [m["mid"] for m in await database.messages.find().to_list(None)] == ["m.old"]


def guarded_claim(database: Any, messages: MessageRepository, key: str, channel: ObjectId, mid: str) -> LeadInsert:
    """The echo's claim: not written when a message of the channel holds ``mid``."""
    return LeadInsert(database.echo_pairs, {"_id": key, "version": 1}, guard=messages.mid_guard(channel, mid))


@pytest.mark.parametrize("client_bulk_write", [True, False], ids=["mongodb-8", "separately"])
async def test_a_guarded_lead_is_not_written_for_a_mid_a_message_holds(
    db: tuple[Any, Commands], repos: Repos, client_bulk_write: bool
) -> None:
    database, commands = db
    channel, messages = ObjectId(), repos[0]
    messages._inserter.client_bulk_write = client_bulk_write
    commands.seen.clear()
    await messages.insert(_message(channel, "m.new"), lead=guarded_claim(database, messages, "k1", channel, "m.new"))
    # MongoDB 8.0+: the guard, the claim and the message in one command; else a read first.
    assert dict(commands.seen) == ({"bulkWrite": 1} if client_bulk_write else {"find": 1, "insert": 2})

    # The mid is held now (a redelivery): neither the claim nor the message is written.
    with pytest.raises(LeadRefused) as raised:
        await messages.insert(
            _message(channel, "m.new"), lead=guarded_claim(database, messages, "k2", channel, "m.new")
        )
    assert isinstance(raised.value.failure, GuardFailed)
    assert await database.echo_pairs.count_documents({"_id": "k2"}) == 0
    assert await database.messages.count_documents({}) == 1
    # The guard is the channel's: the same mid in another channel is free.
    other = ObjectId()
    await messages.insert(_message(other, "m.new"), lead=guarded_claim(database, messages, "k3", other, "m.new"))
    assert await database.echo_pairs.count_documents({"_id": "k3"}) == 1


async def test_guarded_leads_of_a_batch_read_their_guards_first(db: tuple[Any, Commands], repos: Repos) -> None:
    database, commands = db
    channel, messages = ObjectId(), repos[0]
    await messages.insert(_message(channel, "m.held"))
    commands.seen.clear()
    outcomes = await asyncio.gather(
        messages.insert(_message(channel, "m.free"), lead=guarded_claim(database, messages, "a", channel, "m.free")),
        messages.insert(_message(channel, "m.held"), lead=guarded_claim(database, messages, "b", channel, "m.held")),
        messages.insert(_message(channel, "m.plain")),
        return_exceptions=True,
    )
    assert outcomes[0] is None and outcomes[2] is None
    assert isinstance(outcomes[1], LeadRefused) and isinstance(outcomes[1].failure, GuardFailed)
    # The two guards share one read (the repository's look-up by mid); then leads, then messages.
    assert dict(commands.seen) == {"find": 1, "insert": 2}
    assert sorted(m["mid"] for m in await database.messages.find().to_list(None)) == ["m.free", "m.held", "m.plain"]
    assert [d["_id"] for d in await database.echo_pairs.find().to_list(None)] == ["a"]


# -- a follower after the insert and its probe (the conversation update) ---------------------


def tally(database: Any, doc_id: int = 1, update: dict[str, Any] | None = None) -> UpdateOne:
    return UpdateOne({"_id": doc_id}, update or {"$inc": {"n": 1}}, namespace=database.tallies.full_name)


async def test_a_lone_insert_runs_its_follower_only_after_a_probe_that_did_not_match(
    db: tuple[Any, Commands], repos: Repos
) -> None:
    database, commands = db
    channel, (messages, orphans) = ObjectId(), repos
    await database.tallies.insert_one({"_id": 1, "n": 0, "name": "text"})
    await database.orphan_events.insert_one({"channel_id": channel, "key": "k1", "target_mid": "m.early"})

    def send(mid: str, follower: UpdateOne) -> Any:
        probe = orphans.arrival_probe(channel, [mid])
        return messages.insert_then(_message(channel, mid), probe=probe, follower=follower)

    commands.seen.clear()
    assert await send("m.alone", tally(database)) == Inserted(probe_matched=False, follower_applied=True)
    assert dict(commands.seen) == {"bulkWrite": 1}
    # An event came first: the probe is refused, which stops the command before the follower.
    assert await send("m.early", tally(database)) == Inserted(probe_matched=True, follower_applied=None)
    # A duplicate stops it at the insert.
    with pytest.raises(DuplicateKeyError):
        await send("m.alone", tally(database))
    assert (await database.tallies.find_one({"_id": 1}))["n"] == 1
    # A follower that matches nothing, or is refused, did not apply; the message is stored.
    assert await send("m.missed", tally(database, 2)) == Inserted(False, False)
    assert await send("m.refused", tally(database, 1, {"$inc": {"name": 1}})) == Inserted(False, False)
    assert await database.messages.count_documents({}) == 4
    assert await database.orphan_events.find_one({"key": "k1"}, {"_id": 0, "key": 1}) == {"key": "k1"}


async def test_a_follower_is_not_sent_with_a_batch_or_without_client_bulk_write(
    db: tuple[Any, Commands], repos: Repos
) -> None:
    """Not sent: the caller applies its change itself (``follower_applied`` None)."""
    database, commands = db
    channel, messages = ObjectId(), repos[0]
    await database.tallies.insert_one({"_id": 1, "n": 0})
    commands.seen.clear()
    batched = await asyncio.gather(
        *(messages.insert_then(_message(channel, f"m.b{n}"), follower=tally(database)) for n in range(3))
    )
    assert batched == [Inserted(None, None)] * 3
    assert dict(commands.seen) == {"insert": 1}
    messages.use_client_bulk_write(False)
    assert await messages.insert_then(_message(channel, "m.old"), follower=tally(database)) == Inserted(None, None)
    assert (await database.tallies.find_one({"_id": 1}))["n"] == 0
    assert await database.messages.count_documents({}) == 4


def marks(database: Any, update: dict[str, Any] | None = None) -> UpdateMany:
    """A trailer: every tally marked (as step 4 marks a thread's customer messages answered)."""
    return UpdateMany({}, update or {"$set": {"marked": True}}, namespace=database.tallies.full_name)


async def test_a_trailer_runs_after_its_follower_whatever_the_follower_matched(
    db: tuple[Any, Commands], repos: Repos
) -> None:
    database, commands = db
    channel, (messages, orphans) = ObjectId(), repos
    await database.tallies.insert_many([{"_id": 1, "n": 0}, {"_id": 2, "n": 0}])
    await database.orphan_events.insert_one({"channel_id": channel, "key": "k1", "target_mid": "m.early"})

    async def send(mid: str, follower: UpdateOne, trailer: UpdateMany) -> Inserted:
        probe = orphans.arrival_probe(channel, [mid])
        return await messages.insert_then(_message(channel, mid), probe=probe, follower=follower, trailer=trailer)

    async def marked() -> list[bool]:
        return [bool(t.get("marked")) for t in await database.tallies.find().sort("_id").to_list(None)]

    commands.seen.clear()
    # The follower matched one document, the trailer two: each told apart (verbose results).
    assert await send("m.1", tally(database), marks(database)) == Inserted(False, True, True)
    assert dict(commands.seen) == {"bulkWrite": 1}
    assert await marked() == [True, True]
    # A follower that misses is no error: the trailer still runs.
    assert await send("m.2", tally(database, 3), marks(database, {"$set": {"again": 1}})) == Inserted(
        False, False, True
    )
    assert await database.tallies.count_documents({"again": 1}) == 2
    # An early event stops the command at the probe: neither ran (the caller does both itself).
    assert await send("m.early", tally(database), marks(database, {"$set": {"late": 1}})) == Inserted(True, None, None)
    assert await database.tallies.count_documents({"late": 1}) == 0
    # A refused trailer: the follower ran and applied, the trailer did not.
    refused = marks(database, {"$inc": {"n": "x"}})  # $inc of a string: refused
    assert await send("m.3", tally(database), refused) == Inserted(False, True, False)
    assert (await database.tallies.find_one({"_id": 1}))["n"] == 2
    # A refused follower: neither applied.
    wrong = tally(database, 1, {"$inc": {"n": "x"}})
    assert await send("m.4", wrong, marks(database, {"$set": {"after": 1}})) == Inserted(False, False, False)
    assert await database.tallies.count_documents({"after": 1}) == 0
    assert await database.messages.count_documents({}) == 5


async def test_a_trailer_goes_only_with_its_follower(db: tuple[Any, Commands], repos: Repos) -> None:
    database, commands = db
    channel, messages = ObjectId(), repos[0]
    await database.tallies.insert_one({"_id": 1, "n": 0})
    commands.seen.clear()
    # No follower: no trailer (its outcome would have nothing to follow).
    assert await messages.insert_then(_message(channel, "m.a"), trailer=marks(database)) == Inserted(None, None, None)
    messages.use_client_bulk_write(False)
    alone = await messages.insert_then(_message(channel, "m.b"), follower=tally(database), trailer=marks(database))
    assert alone == Inserted(None, None, None)
    assert await database.tallies.count_documents({"marked": True}) == 0
    assert await database.messages.count_documents({}) == 2


def _message(channel: ObjectId, mid: str) -> dict[str, Any]:
    return {"_id": ObjectId(), "channel_id": channel, "mid": mid, "mids": [mid], "content": mid}
