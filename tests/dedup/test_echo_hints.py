"""The Redis hint that orders an echo's pairing: with no send outstanding the pairing document is
created without being read first, in the same command as the echo's message (one round trip for
both); a wrong hint costs round trips, never a duplicate."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from pymongo import monitoring

from models.sharding import client_bulk_write_parts
from server.dedup.marks import sent_message_key
from tests.support.dedup import conversation_of, echo, mark_sent, new_mid, ok_body, stored_messages
from tests.support.helpers import CUSTOMER_A, messaging_body, text_item
from tests.support.server import RunningServer, connect_tenant, start_server, stop_server


class PairingCommands(monitoring.CommandListener):
    """The commands sent to ``echo_pairs`` while ``on`` (a write inside a client ``bulkWrite`` as
    ``bulkWrite:<its kind>``), and the collections each such ``bulkWrite`` wrote, in order."""

    def __init__(self) -> None:
        self.on = False
        self.names: list[str] = []
        self.bulk_writes: list[list[str]] = []
        self.message_reads = 0  # finds on messages (the look-up by mid)

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if not self.on:
            return
        if event.command_name == "bulkWrite":
            parts = client_bulk_write_parts(event.command)
            self.names.extend(f"bulkWrite:{name}" for name, coll, _ in parts if coll == "echo_pairs")
            if any(coll == "echo_pairs" for _, coll, _ in parts):
                self.bulk_writes.append([coll for _, coll, _ in parts])
        elif event.command.get(event.command_name) == "echo_pairs":
            self.names.append(event.command_name)
        elif event.command_name == "find" and event.command.get("find") == "messages":
            self.message_reads += 1

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        return None

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        return None


@pytest.fixture
async def watched(settings: Any) -> AsyncIterator[tuple[RunningServer, PairingCommands]]:
    listener = PairingCommands()
    running = await start_server(settings, mongo_listeners=[listener])
    await connect_tenant(running.client)
    # The customer and their conversation exist: the echoes below only pair.
    ok_body(await running.client.webhook(messaging_body(text_item(new_mid("c"), "hi", sender=CUSTOMER_A))))
    yield running, listener
    await stop_server(running)


@pytest.mark.parametrize("client_bulk_write", [True, False], ids=["mongodb-8", "embedded-store"])
async def test_an_echo_typed_in_the_app_creates_its_pairing_document_without_reading_it(
    watched, client_bulk_write: bool
) -> None:
    server, listener = watched
    # The embedded store gets separate commands (models/store.Store.adapt_to_server); MongoDB
    # 8.0+ one client bulkWrite — tried here on the embedded store for its behaviour.
    server.core.store.messages.use_client_bulk_write(client_bulk_write)
    listener.on = True
    body = ok_body(await echo(server.client, new_mid("e"), "typed in the Instagram app"))
    listener.on = False
    assert body["status"] == "success" and "duplicate" not in body
    if client_bulk_write:
        assert listener.names == ["bulkWrite:insert"]
        # One command: whether a message holds the mid already (refused if one does: nothing
        # after it runs), the pairing claim, then the message (only if the claim succeeded),
        # then whether events about it came first, then (none came: a refused probe would
        # stop it) the conversation's update for the state this process saw last, then (the
        # customer's "hi" waits for a reply) the customer's messages marked answered.
        assert listener.bulk_writes == [
            ["messages", "echo_pairs", "messages", "orphan_events", "conversations", "messages"]
        ]
        assert listener.message_reads == 0
    else:
        assert listener.names == ["insert"] and listener.bulk_writes == []
        assert listener.message_reads == 1  # the claim's guard, read first


@pytest.mark.parametrize("client_bulk_write", [True, False], ids=["mongodb-8", "embedded-store"])
async def test_a_redelivered_app_message_makes_no_new_claim(watched, client_bulk_write: bool) -> None:
    """The claim's guard: a message already holds the mid, so no pairing document is created
    for it again — one created now, after the first one expired, would carry a fresh time, and a
    send of the same text within the window could pair with this old message."""
    server, listener = watched
    server.core.store.messages.use_client_bulk_write(client_bulk_write)
    mid = new_mid("e")
    ok_body(await echo(server.client, mid, "see you tomorrow"))
    assert await server.core.store.db.echo_pairs.delete_many({}) is not None  # the claim expired
    server.core.pipeline.recent.clear()  # redelivered to a process that did not store it
    listener.on = True
    body = ok_body(await echo(server.client, mid, "see you tomorrow"))
    listener.on = False
    assert body == {"status": "success", "duplicate": True, "layer": "mid"}
    assert await server.core.store.db.echo_pairs.count_documents({}) == 0
    # MongoDB 8.0+: the claim went in the command, behind the guard that stopped it.
    assert listener.names == (["bulkWrite:insert"] if client_bulk_write else [])
    texts = [m["content"] for m in await stored_messages(server.core.store.db)]
    assert texts.count("see you tomorrow") == 1


async def test_an_echo_of_an_outstanding_send_reads_the_pairing_document_first(watched) -> None:
    server, listener = watched
    ok_body(await mark_sent(server.client, "from the assistant"))
    listener.on = True
    body = ok_body(await echo(server.client, new_mid("e"), "from the assistant"))
    listener.on = False
    assert body == {"status": "success", "duplicate": True, "layer": "cache"}
    assert listener.names == ["find", "update"]


async def test_a_wrong_hint_costs_a_round_trip_not_a_duplicate(watched) -> None:
    server, listener = watched
    ok_body(await mark_sent(server.client, "hint lost"))
    conversation = await conversation_of(server.core.store.db)
    assert conversation is not None
    # Redis forgot the outstanding send (restarted empty, failed over): the hint says "none".
    assert await server.core.redis.delete(sent_message_key(conversation["_id"], "hint lost")) == 1
    listener.on = True
    body = ok_body(await echo(server.client, new_mid("e"), "hint lost"))
    listener.on = False
    # MongoDB's pairing document still decides: the echo is the send's, recognised by the database.
    assert body == {"status": "success", "duplicate": True, "layer": "database"}
    assert listener.names == ["insert", "find", "update"]  # the claim refused, then read and decided
    texts = [m["content"] for m in await stored_messages(server.core.store.db)]
    assert texts.count("hint lost") == 1
