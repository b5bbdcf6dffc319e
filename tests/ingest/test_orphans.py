"""Events about a message we never stored: recorded (not an error), answered with
``message_id: null``, kept once under redelivery, and applied when the message arrives."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from bson import ObjectId

from models.timeutil import from_epoch_ms
from server.app.embedded import EmbeddedStores
from tests.support.commands import CommandNames, touching
from tests.support.events import ECHO_MID, REPLY_MID, TEXT_MID, EventsEnv, events_env
from tests.support.helpers import ACCOUNT_ID, CUSTOMER_A, echo_item, messaging_body, text_item


@pytest.fixture(params=[True, False], ids=["mongodb-8", "embedded-store"])
async def env(stores: EmbeddedStores, tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[EventsEnv]:
    """Each test twice: as on MongoDB 8.0+ (client bulkWrite: a lone message's conversation
    update goes last in its insert's command, which an early event stops before it) and as on
    the embedded store (separate commands). The first is tried on the embedded store for its
    behaviour (``models/store.Store.adapt_to_server`` turns it on only where it is journaled)."""
    async with events_env(stores, tmp_path) as e:
        e.core.store.messages.use_client_bulk_write(request.param)
        e.core.store.conversations.use_client_bulk_write(request.param)
        yield e


async def test_reaction_before_its_message_is_kept_once_and_applied_on_arrival(env: EventsEnv) -> None:
    answer = await env.fixture("customer_reaction")
    assert answer == {"status": "success", "event": "reaction", "message_id": None, "changes": []}
    assert (await env.fixture("customer_reaction"))["message_id"] is None
    [orphan] = await env.core.store.orphan_events.find(env.channel_oid, ECHO_MID)
    assert orphan["kind"] == "reaction" and orphan["applied_at"] is None
    assert env.events() == []

    await env.fixture("owner_echo_text")
    echo = await env.message(ECHO_MID)
    assert echo is not None
    assert [(r["by"], r["reaction"]) for r in echo["reactions"]] == [(CUSTOMER_A, "love")]
    # The message's own chat_message already shows the reaction: no separate update.
    [chat] = env.events("chat_message")
    assert chat.data["message"]["reactions"][0]["reaction"] == "love"
    assert env.events("message_updated") == []
    [orphan] = await env.core.store.orphan_events.find(env.channel_oid, ECHO_MID)
    assert orphan["applied_at"] is not None and orphan["message_id"] == echo["_id"]

    metrics = (await env.client.get("/metrics")).body
    assert b'igsync_orphan_events_total{kind="reaction"} 1.0' in metrics


async def test_edit_and_unsend_before_the_message(env: EventsEnv) -> None:
    await env.fixture("message_edit")
    await env.fixture("customer_unsend")
    assert await env.core.store.orphan_events.count(env.channel_oid, applied=False) == 2

    await env.fixture("customer_text")
    text = await env.message(TEXT_MID)
    assert text is not None and text["is_deleted"] is True and text["content"] == ""
    conversation = await env.core.store.conversations.get(text["conversation_id"])
    # The conversation's summary never showed the unsent text.
    assert conversation["last_message"]["id"] == text["_id"] and conversation["last_message"]["content"] == ""
    assert env.events("chat_message")[0].data["message"]["is_deleted"] is True

    await env.fixture("owner_echo_text")
    await env.fixture("customer_reply_to_message")
    reply = await env.message(REPLY_MID)
    assert reply is not None
    assert reply["content"] == "Great, then I'll order tomorrow."
    assert [(h["content"], h["num_edit"]) for h in reply["edit_history"]] == [("Great, then I'll order today.", 0)]
    assert reply["reply_to"]["message_id"] == (await env.message(ECHO_MID))["_id"]
    conversation = await env.core.store.conversations.get(reply["conversation_id"])
    assert conversation["last_message"]["content"] == "Great, then I'll order tomorrow."
    assert await env.core.store.orphan_events.count(env.channel_oid, applied=False) == 0


async def test_read_receipt_before_the_echo_reaches_earlier_messages_too(env: EventsEnv) -> None:
    base = 1_763_520_000_000
    await env.post(messaging_body(echo_item("early-out", "sent earlier", timestamp_ms=base)))
    answer = await env.post(
        messaging_body(
            {
                "sender": {"id": CUSTOMER_A},
                "recipient": {"id": ACCOUNT_ID},
                "timestamp": base + 50,
                "read": {"mid": "late-out"},
            }
        )
    )
    assert answer["message_id"] is None
    await env.clear_events()
    await env.post(messaging_body(echo_item("late-out", "the read one", timestamp_ms=base + 10)))
    late = await env.message("late-out")
    early = await env.message("early-out")
    assert late["read_at"] == from_epoch_ms(base + 50)
    assert early["read_at"] == from_epoch_ms(base + 50)
    # The earlier message's change is news; the arriving one is shown by its chat_message.
    assert [e.data["message"]["mid"] for e in env.events("message_updated")] == ["early-out"]
    assert env.events("chat_message")[0].data["message"]["read_at"] is not None


async def test_an_event_for_an_unknown_channel_is_ignored_not_kept(env: EventsEnv) -> None:
    body = messaging_body(
        {"sender": {"id": CUSTOMER_A}, "recipient": {"id": "999"}, "timestamp": 1, "read": {"mid": "x"}},
        account_id="999",
    )
    assert await env.post(body) == {"status": "ignored", "reason": "unknown_channel"}
    assert await env.core.store.orphan_events.count(env.channel_oid) == 0


def reply_item(mid: str, text: str, to_mid: str, timestamp_ms: int) -> dict[str, Any]:
    """A customer's text replying to the message ``to_mid``."""
    item = text_item(mid, text, timestamp_ms=timestamp_ms)
    item["message"]["reply_to"] = {"mid": to_mid}
    return item


async def test_reply_to_a_stored_message_links_it(env: EventsEnv) -> None:
    await env.post(messaging_body(text_item("q-1", "do you ship to Lisbon?", timestamp_ms=1_763_530_000_000)))
    await env.post(messaging_body(reply_item("q-2", "and Porto?", "q-1", 1_763_530_000_100)))
    first, reply = await env.message("q-1"), await env.message("q-2")
    assert reply["reply_to"] == {"mid": "q-1", "message_id": first["_id"]}
    shown = await env.ws_message(str(reply["_id"]))
    assert shown["reply_to"] == {"mid": "q-1", "message_id": str(first["_id"])}


@pytest.mark.parametrize("client_bulk_write", [True, False], ids=["mongodb-8", "embedded-store"])
async def test_a_lone_message_asks_for_early_events_in_its_insert_and_reads_them_only_if_any(
    stores: EmbeddedStores, tmp_path: Path, client_bulk_write: bool
) -> None:
    names = CommandNames()
    async with events_env(stores, tmp_path, mongo_listeners=[names]) as env:
        # MongoDB 8.0+ gets one client bulkWrite (tried here on the embedded store for its
        # behaviour); the embedded store, which does not journal one, the insert and a read.
        env.core.store.messages.use_client_bulk_write(client_bulk_write)
        names.on = True
        await env.post(messaging_body(text_item("mid.lone.1", "nothing came before me")))
        if client_bulk_write:
            assert ("bulkWrite insert", "messages") in names.seen
            assert ("bulkWrite update", "orphan_events") in names.seen  # the probe, in the same command
            assert ("find", "orphan_events") not in names.seen
        else:
            assert names.seen.index(("insert", "messages")) < names.seen.index(("find", "orphan_events"))

        names.seen.clear()
        await env.fixture("customer_reaction")  # about ECHO_MID, not stored yet: kept
        await env.fixture("owner_echo_text")  # its probe matches: the events are read and applied
        assert ("find", "orphan_events") in names.seen
        echo = await env.message(ECHO_MID)
        assert echo is not None and [r["reaction"] for r in echo["reactions"]] == ["love"]


async def test_a_lone_message_updates_its_conversation_in_its_insert_command(
    stores: EmbeddedStores, tmp_path: Path
) -> None:
    """MongoDB 8.0+: the insert, the early-event probe and the conversation's update for the
    state this process saw last go in one ordered command; a stale state, a reply to link or a
    media message take the usual separate update — and every outcome is the same."""
    names = CommandNames()
    fused = [
        ("bulkWrite insert", "messages"),
        ("bulkWrite update", "orphan_events"),
        ("bulkWrite update", "conversations"),
    ]
    async with events_env(stores, tmp_path, mongo_listeners=[names]) as env:
        store = env.core.store
        store.messages.use_client_bulk_write(True)
        store.conversations.use_client_bulk_write(True)
        await env.post(messaging_body(text_item("f.1", "first", timestamp_ms=1_763_530_000_000)))
        # The new customer's profile look-up writes the conversation when it ends (a state this
        # test would then see as stale at a moment of the scheduler's choosing): let it end.
        assert env.core.profiles is not None
        await env.core.profiles.idle()
        # Its write made the remembered state stale: the next message re-learns it.
        await env.post(messaging_body(text_item("f.1b", "again", timestamp_ms=1_763_530_000_050)))
        names.on = True
        await env.post(messaging_body(text_item("f.2", "second", timestamp_ms=1_763_530_000_100)))
        assert touching(names.commands, "conversations") == [fused]
        first = await env.message("f.1")
        conversation = await store.conversations.get(first["conversation_id"])
        assert conversation["unread_count"] == 3 and conversation["status"] == "needs_reply"
        assert conversation["last_message"]["content"] == "second"
        [new] = [e for e in env.events("new_customer_message") if e.data["message"]["content"] == "second"]
        assert new.data["conversation"]["unread_count"] == 3

        # Another process wrote the conversation: the remembered state is stale, the shortcut
        # in the insert's command misses and the usual update applies the message.
        await env.core.store.db.conversations.update_one(
            {"_id": conversation["_id"]}, {"$set": {"unread_count": 5, "rev": ObjectId()}}
        )
        names.commands.clear()
        await env.post(messaging_body(text_item("f.3", "third", timestamp_ms=1_763_530_000_200)))
        # (The state it missed is forgotten: the usual update goes without a shortcut, read back.)
        assert touching(names.commands, "conversations") == [
            fused,
            [("update", "conversations")],
            [("find", "conversations")],
        ]
        conversation = await store.conversations.get(first["conversation_id"])
        assert conversation["unread_count"] == 6 and conversation["last_message"]["content"] == "third"

        # The usual update's result is remembered: the next message goes in one command again,
        # and an owner reply on a waiting thread marks the customer messages answered — last in
        # that command, the only one that touches the messages.
        names.commands.clear()
        await env.post(messaging_body(echo_item("f.4", "we do", timestamp_ms=1_763_530_000_300)))
        [command] = touching(names.commands, "messages")
        assert command[-2:] == [fused[-1], ("bulkWrite update", "messages")]
        assert touching(names.commands, "conversations") == [command]
        conversation = await store.conversations.get(first["conversation_id"])
        assert conversation["status"] == "answered" and conversation["unread_count"] == 0
        answered = [(await env.message(mid))["is_answered"] for mid in ("f.1", "f.1b", "f.2", "f.3")]
        assert answered == [True, True, True, True]

        # A reply to link runs the after-store hook first: a separate conversation update.
        names.commands.clear()
        await env.post(messaging_body(reply_item("f.5", "thanks", "f.4", 1_763_530_000_400)))
        assert ("bulkWrite update", "conversations") not in touching(names.commands, "messages")[0]
        reply = await env.message("f.5")
        assert reply["reply_to"]["message_id"] == (await env.message("f.4"))["_id"]
        conversation = await store.conversations.get(first["conversation_id"])
        assert conversation["last_message"]["content"] == "thanks" and conversation["unread_count"] == 1


async def test_a_redelivery_reads_no_conversation_whose_remembered_state_lists_it(
    stores: EmbeddedStores, tmp_path: Path
) -> None:
    """Whether a redelivered message was applied to its conversation: answered by the state
    this process remembers when that state lists it (ids leave the list only as later ones push
    them out), else by a read — and a half-written one is repaired either way."""
    names = CommandNames()
    async with events_env(stores, tmp_path, mongo_listeners=[names]) as env:
        body = messaging_body(text_item("rr.1", "once", timestamp_ms=1_763_530_000_000))
        await env.post(body)
        assert env.core.profiles is not None
        await env.core.profiles.idle()  # its write to the conversation is remembered too
        await env.post(messaging_body(text_item("rr.2", "twice", timestamp_ms=1_763_530_000_100)))
        recent = env.core.pipeline.recent
        recent.clear()  # not answered from the messages this process finished: the store decides
        names.on = True
        assert (await env.post(body)).get("duplicate") is True
        assert touching(names.commands, "conversations") == []
        # A process that does not remember the conversation reads it.
        env.core.store.conversations._known.clear()
        names.commands.clear()
        assert (await env.post(body)).get("duplicate") is True
        assert touching(names.commands, "conversations") == [[("find", "conversations")]]
        message = await env.message("rr.1")
        conversation = await env.core.store.conversations.get(message["conversation_id"])
        assert conversation["unread_count"] == 2 and conversation["recent_message_ids"].count(message["_id"]) == 1


async def test_a_redelivered_message_stops_its_command_before_the_conversation(
    stores: EmbeddedStores, tmp_path: Path
) -> None:
    async with events_env(stores, tmp_path) as env:
        store = env.core.store
        store.messages.use_client_bulk_write(True)
        store.conversations.use_client_bulk_write(True)
        body = messaging_body(text_item("r.1", "once", timestamp_ms=1_763_530_000_000))
        await env.post(messaging_body(text_item("r.0", "before", timestamp_ms=1_763_529_000_000)))
        await env.post(body)
        answer: dict[str, Any] = await env.post(body)
        assert answer.get("duplicate") is True
        message = await env.message("r.1")
        conversation = await store.conversations.get(message["conversation_id"])
        assert conversation["unread_count"] == 2
        assert conversation["recent_message_ids"].count(message["_id"]) == 1
