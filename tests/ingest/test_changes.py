"""Reactions, edits, unsends and read receipts against a real server.

Each event: the stored change, the webhook answer, the inbox event (through a
RecordingSink until the realtime hub lands), and that a redelivery changes nothing."""

from __future__ import annotations

from typing import Any

import orjson

from models.timeutil import from_epoch_ms, iso
from tests.support.events import ECHO_MID, REPLY_MID, TEXT_MID, EventsEnv
from tests.support.helpers import ACCOUNT_ID, CUSTOMER_A, echo_item, fixture_json, messaging_body, text_item


def fixture_time(name: str) -> Any:
    return from_epoch_ms(fixture_json(name)["entry"][0]["messaging"][0]["timestamp"])


def stable(doc: dict[str, Any] | None) -> dict[str, Any]:
    assert doc is not None
    return doc


def reaction_item(mid: str, *, sender: str, recipient: str, ts: int, action: str = "react", **extra: Any) -> dict:
    reaction = {"mid": mid, "action": action, **extra}
    return {"sender": {"id": sender}, "recipient": {"id": recipient}, "timestamp": ts, "reaction": reaction}


def edit_item(mid: str, text: str, num_edit: Any, *, ts: int) -> dict:
    edit: dict[str, Any] = {"mid": mid, "text": text}
    if num_edit is not None:
        edit["num_edit"] = num_edit
    return {"sender": {"id": CUSTOMER_A}, "recipient": {"id": ACCOUNT_ID}, "timestamp": ts, "message_edit": edit}


def read_item(mid: str, *, ts: int) -> dict:
    return {"sender": {"id": CUSTOMER_A}, "recipient": {"id": ACCOUNT_ID}, "timestamp": ts, "read": {"mid": mid}}


# -- reactions ------------------------------------------------------------------------------------


async def test_reaction_then_unreact_and_their_redeliveries(env: EventsEnv) -> None:
    await env.fixture("owner_echo_text")
    echo = stable(await env.message(ECHO_MID))
    await env.clear_events()

    answer = await env.fixture("customer_reaction")
    assert answer == {
        "status": "success",
        "event": "reaction",
        "message_id": str(echo["_id"]),
        "changes": ["reactions"],
    }
    stored = stable(await env.message(ECHO_MID))
    at = fixture_time("customer_reaction")
    assert stored["reactions"] == [{"by": CUSTOMER_A, "reaction": "love", "emoji": "\u2764\ufe0f", "at": at}]
    shown = await env.ws_message(str(echo["_id"]))
    assert shown["reactions"] == [{"by": CUSTOMER_A, "reaction": "love", "emoji": "\u2764\ufe0f", "at": iso(at)}]
    [event] = env.events()
    assert event.name == "message_updated"
    assert event.data["changes"] == ["reactions"]
    assert event.data["message"]["reactions"] == shown["reactions"]
    assert event.channel_id == env.channel["id"]

    await env.clear_events()
    again = await env.fixture("customer_reaction")
    assert again["changes"] == [] and again["message_id"] == str(echo["_id"])
    assert await env.message(ECHO_MID) == stored
    assert env.events() == []

    answer = await env.fixture("customer_unreact")
    assert answer["event"] == "unreact" and answer["changes"] == ["reactions"]
    unreacted = stable(await env.message(ECHO_MID))
    assert unreacted["reactions"] == []
    [event] = env.events()
    assert event.name == "message_updated" and event.data["message"]["reactions"] == []

    await env.clear_events()
    # A redelivered unreact, and the (older) react redelivered after it: nothing changes.
    assert (await env.fixture("customer_unreact"))["changes"] == []
    assert (await env.fixture("customer_reaction"))["changes"] == []
    assert await env.message(ECHO_MID) == unreacted
    assert env.events() == []


async def test_one_reaction_per_person(env: EventsEnv) -> None:
    base = 1_763_470_000_000
    await env.post(messaging_body(text_item("m-react-1", "nice shoes", timestamp_ms=base)))
    await env.post(
        messaging_body(
            reaction_item(
                "m-react-1", sender=CUSTOMER_A, recipient=ACCOUNT_ID, ts=base + 1, reaction="love", emoji="L"
            ),
            reaction_item(
                "m-react-1", sender=ACCOUNT_ID, recipient=CUSTOMER_A, ts=base + 2, reaction="like", emoji="+"
            ),
        )
    )
    doc = stable(await env.message("m-react-1"))
    assert {(r["by"], r["reaction"]) for r in doc["reactions"]} == {(CUSTOMER_A, "love"), (ACCOUNT_ID, "like")}

    answer = await env.post(
        messaging_body(
            reaction_item("m-react-1", sender=CUSTOMER_A, recipient=ACCOUNT_ID, ts=base + 3, reaction="haha", emoji="H")
        )
    )
    assert answer["changes"] == ["reactions"]
    doc = stable(await env.message("m-react-1"))
    assert sorted((r["by"], r["reaction"], r["emoji"]) for r in doc["reactions"]) == sorted(
        [(CUSTOMER_A, "haha", "H"), (ACCOUNT_ID, "like", "+")]
    )
    # The owner's unreact removes only the owner's reaction.
    await env.post(
        messaging_body(
            reaction_item("m-react-1", sender=ACCOUNT_ID, recipient=CUSTOMER_A, ts=base + 4, action="unreact")
        )
    )
    doc = stable(await env.message("m-react-1"))
    assert [(r["by"], r["reaction"]) for r in doc["reactions"]] == [(CUSTOMER_A, "haha")]


# -- edits ------------------------------------------------------------------------------------------


async def test_edit_keeps_history_and_is_idempotent(env: EventsEnv) -> None:
    await env.fixture("owner_echo_text")
    await env.fixture("customer_reply_to_message")
    original = stable(await env.message(REPLY_MID))
    await env.clear_events()

    answer = await env.fixture("message_edit")
    assert answer == {
        "status": "success",
        "event": "edit",
        "message_id": str(original["_id"]),
        "changes": ["content", "edited_at", "edit_history"],
    }
    new_text = fixture_json("message_edit")["entry"][0]["messaging"][0]["message_edit"]["text"]
    edited = stable(await env.message(REPLY_MID))
    assert edited["content"] == new_text
    assert edited["edited_at"] == fixture_time("message_edit")
    assert edited["num_edit"] == 1
    assert edited["edit_history"] == [{"content": original["content"], "num_edit": 0, "at": original["sent_at"]}]
    shown = await env.ws_message(str(original["_id"]))
    assert shown["content"] == new_text
    assert shown["edited_at"] == iso(fixture_time("message_edit"))
    assert shown["edit_history"][0]["content"] == original["content"]
    names = [e.name for e in env.events()]
    assert names == ["message_updated", "conversation_updated"]
    assert env.events("conversation_updated")[0].data["conversation"]["last_message"]["content"] == new_text

    conversation = await env.core.store.conversations.get(original["conversation_id"])
    await env.clear_events()
    again = await env.fixture("message_edit")
    assert again["changes"] == []
    assert await env.message(REPLY_MID) == edited
    assert await env.core.store.conversations.get(original["conversation_id"]) == conversation
    assert env.events() == []


async def test_edits_out_of_order_and_num_edit_as_string(env: EventsEnv) -> None:
    base = 1_763_480_000_000
    await env.post(messaging_body(text_item("m-edit-1", "v0", timestamp_ms=base)))
    # The second edit arrives first, with num_edit as a string as Meta's example writes it.
    answer = await env.post(messaging_body(edit_item("m-edit-1", "v2", "2", ts=base + 20)))
    assert answer["changes"] == ["content", "edited_at", "edit_history"]
    answer = await env.post(messaging_body(edit_item("m-edit-1", "v1", 1, ts=base + 10)))
    assert answer["changes"] == ["edit_history"]
    doc = stable(await env.message("m-edit-1"))
    assert doc["content"] == "v2" and doc["num_edit"] == 2
    assert [(h["content"], h["num_edit"]) for h in doc["edit_history"]] == [("v0", 0), ("v1", 1)]
    for item in (edit_item("m-edit-1", "v1", 1, ts=base + 10), edit_item("m-edit-1", "v2", "2", ts=base + 20)):
        assert (await env.post(messaging_body(item)))["changes"] == []
    assert await env.message("m-edit-1") == doc


async def test_edit_without_num_edit_counts_on_and_an_empty_edit_is_ignored(env: EventsEnv) -> None:
    base = 1_763_490_000_000
    await env.post(messaging_body(text_item("m-edit-2", "hello", timestamp_ms=base)))
    assert (await env.post(messaging_body(edit_item("m-edit-2", "hello!", None, ts=base + 5))))["changes"]
    assert (await env.post(messaging_body(edit_item("m-edit-2", "hello!", None, ts=base + 5))))["changes"] == []
    assert (await env.post(messaging_body(edit_item("m-edit-2", "", 7, ts=base + 6))))["changes"] == []
    doc = stable(await env.message("m-edit-2"))
    assert doc["content"] == "hello!" and doc["num_edit"] == 1
    assert [h["content"] for h in doc["edit_history"]] == ["hello"]


async def test_edit_text_is_data_not_an_expression(env: EventsEnv) -> None:
    base = 1_763_495_000_000
    await env.post(messaging_body(text_item("m-edit-3", "price?", timestamp_ms=base)))
    await env.post(messaging_body(edit_item("m-edit-3", "$content", 1, ts=base + 1)))
    assert stable(await env.message("m-edit-3"))["content"] == "$content"


# -- unsend -------------------------------------------------------------------------------------------


async def test_unsend_clears_the_message_and_is_idempotent(env: EventsEnv) -> None:
    await env.fixture("customer_text")
    original = stable(await env.message(TEXT_MID))
    await env.clear_events()

    answer = await env.fixture("customer_unsend")
    assert answer == {
        "status": "success",
        "event": "unsend",
        "message_id": str(original["_id"]),
        "changes": ["is_deleted", "content"],
    }
    deleted = stable(await env.message(TEXT_MID))
    assert deleted["is_deleted"] is True and deleted["content"] == ""
    assert deleted["deleted_at"] == fixture_time("customer_unsend")
    shown = await env.ws_message(str(original["_id"]))
    assert shown["is_deleted"] is True and shown["content"] == ""
    assert [e.name for e in env.events()] == ["message_deleted", "conversation_updated"]
    assert env.events("message_deleted")[0].data == {"message_id": str(original["_id"])}
    last = env.events("conversation_updated")[0].data["conversation"]["last_message"]
    assert last["id"] == str(original["_id"]) and last["content"] == ""

    conversation = await env.core.store.conversations.get(original["conversation_id"])
    await env.clear_events()
    assert (await env.fixture("customer_unsend"))["changes"] == []
    assert await env.message(TEXT_MID) == deleted
    assert await env.core.store.conversations.get(original["conversation_id"]) == conversation
    assert env.events() == []
    # A deleted message takes no reaction or edit.
    reaction = reaction_item(TEXT_MID, sender=CUSTOMER_A, recipient=ACCOUNT_ID, ts=1_763_470_000_000, reaction="love")
    assert (await env.post(messaging_body(reaction)))["changes"] == []
    assert (await env.post(messaging_body(edit_item(TEXT_MID, "again", 5, ts=1_763_470_000_001))))["changes"] == []
    assert await env.message(TEXT_MID) == deleted


# -- read receipts ----------------------------------------------------------------------------------------


async def test_read_receipt_marks_outbound_messages_up_to_the_read_one(env: EventsEnv) -> None:
    base = 1_763_500_000_000
    await env.post(
        messaging_body(
            echo_item("out-1", "first", timestamp_ms=base + 1),
            text_item("in-1", "question", timestamp_ms=base + 2),
            echo_item("out-2", "second", timestamp_ms=base + 3),
            echo_item("out-3", "third", timestamp_ms=base + 4),
        )
    )
    await env.clear_events()
    answer = await env.post(messaging_body(read_item("out-2", ts=base + 10)))
    out2 = stable(await env.message("out-2"))
    assert answer == {"status": "success", "event": "read", "message_id": str(out2["_id"]), "changes": ["read_at"]}
    read_at = from_epoch_ms(base + 10)
    assert stable(await env.message("out-1"))["read_at"] == read_at
    assert out2["read_at"] == read_at
    assert stable(await env.message("out-3"))["read_at"] is None
    assert stable(await env.message("in-1"))["read_at"] is None
    updated = env.events("message_updated")
    assert sorted(e.data["message"]["mid"] for e in updated) == ["out-1", "out-2"]
    assert all(e.data["changes"] == ["read_at"] for e in updated)
    assert (await env.ws_message(str(out2["_id"])))["read_at"] == iso(read_at)

    await env.clear_events()
    assert (await env.post(messaging_body(read_item("out-2", ts=base + 10))))["changes"] == []
    assert env.events() == []
    await env.post(messaging_body(read_item("out-3", ts=base + 20)))
    assert stable(await env.message("out-3"))["read_at"] == from_epoch_ms(base + 20)
    assert stable(await env.message("out-1"))["read_at"] == read_at  # the first read stays


async def test_read_receipt_fixture(env: EventsEnv) -> None:
    await env.fixture("owner_echo_text")
    answer = await env.fixture("read_receipt")
    assert answer["event"] == "read" and answer["changes"] == ["read_at"]
    assert stable(await env.message(ECHO_MID))["read_at"] == fixture_time("read_receipt")
    assert (await env.fixture("read_receipt"))["changes"] == []


async def test_events_in_one_batch_are_applied_in_order(env: EventsEnv) -> None:
    base = 1_763_510_000_000
    body = messaging_body(
        text_item("m-batch", "hi", timestamp_ms=base),
        reaction_item("m-batch", sender=ACCOUNT_ID, recipient=CUSTOMER_A, ts=base + 1, reaction="love", emoji="L"),
        edit_item("m-batch", "hi there", 1, ts=base + 2),
    )
    answer = await env.post(body)
    assert [r.get("event") for r in answer["results"]] == [None, "reaction", "edit"]
    doc = stable(await env.message("m-batch"))
    assert doc["content"] == "hi there" and len(doc["reactions"]) == 1
    # The whole body again: every item is a duplicate or changes nothing.
    again = await env.post(body)
    assert again["results"][0]["duplicate"] is True
    assert [r["changes"] for r in again["results"][1:]] == [[], []]
    assert await env.message("m-batch") == doc


async def test_invalid_event_items_are_answered_in_place(env: EventsEnv) -> None:
    payload = {
        "object": "instagram",
        "entry": [
            {
                "id": ACCOUNT_ID,
                "time": 1,
                "messaging": [
                    {"sender": {"id": CUSTOMER_A}, "recipient": {"id": ACCOUNT_ID}, "reaction": {"action": "react"}},
                    {"sender": {"id": CUSTOMER_A}, "recipient": {"id": ACCOUNT_ID}, "message_edit": {"text": "x"}},
                ],
            }
        ],
    }
    answer = await env.post(orjson.dumps(payload))
    assert [r["error"] for r in answer["results"]] == ["invalid_item", "invalid_item"]
    assert await env.core.store.orphan_events.count(env.channel_oid) == 0
