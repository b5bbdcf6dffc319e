"""Inbox events: what the core announces after a change, and the sink it hands them to.

This module owns the *vocabulary* (API.md §4: which events a change produces, with which
data); :mod:`server.realtime.hub` owns the *delivery* (sequence numbers, fan-out across
processes, sockets). The core builds :class:`Event` objects from stored documents and
calls ``await sink.publish(events)`` once the change is durable in MongoDB.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from models import serializers
from models.messages import TYPE_CUSTOMER

CHAT_MESSAGE = "chat_message"
NEW_CUSTOMER_MESSAGE = "new_customer_message"
OWNER_MESSAGE_NOTIFICATION = "owner_message_notification"
CONVERSATION_UPDATED = "conversation_updated"
MESSAGE_UPDATED = "message_updated"
MESSAGE_DELETED = "message_deleted"
RESYNC_REQUIRED = "resync_required"
CHANNEL_UPDATED = "channel_updated"
HISTORY_IMPORT = "history_import"

SOURCE_INSTAGRAM_DIRECT = "instagram_direct"
SOURCE_APP = "app"


@dataclass
class Event:
    """One inbox event before it has a sequence number.

    ``received_at`` is the wall-clock time (``time.time()``) the change entered igsync —
    the webhook's arrival — so that delivery latency can be measured at the socket, in
    any process.
    """

    name: str
    channel_id: str
    conversation_id: str | None
    data: dict[str, Any]
    received_at: float = field(default_factory=time.time)
    # Names the fact the event announces (``msg:<message id>`` for a new message's events).
    # The hub logs the events of one fact at most once, so the core may publish them again
    # whenever it cannot know whether they went out (a redelivery after a crash between the
    # store and the publish): what was logged is skipped, what was not goes out now.
    once: str | None = None


log = logging.getLogger("igsync.events")


class EventSink(Protocol):
    async def publish(self, events: list[Event]) -> bool:
        """Deliver events; may raise (the publisher logs it). True when they are *settled*: in
        their channels' logs (or logged before), so nothing about them is left for a redelivery
        of the change to repair; False when they went to this process's sockets only."""
        ...


class SafePublisher:
    """The one way inbox events leave the core.

    Called only after the change they describe is durable in MongoDB, and never fails that
    change: an unreachable hub is logged and clients re-sync from REST (their next resume
    gets ``resync_required``). The vocabulary is this module; every event kind has a case in
    ``tests/realtime/test_events.py``; the delivery design is docs/realtime.md."""

    def __init__(self, sink: EventSink) -> None:
        self.sink = sink

    async def publish(self, events: list[Event]) -> bool:
        """Hand ``events`` to the sink; log, never raise, when it fails. True when settled
        (:meth:`EventSink.publish`)."""
        try:
            return await self.sink.publish(events)
        except Exception:
            log.exception("publishing %d events failed", len(events))
            return False


class NullSink:
    """Drops events: for CLI tools (replay) that run the pipeline without sockets."""

    async def publish(self, events: list[Event]) -> bool:
        """Drop the events: settled, there is no log to repair."""
        return True


class RecordingSink:
    """Keeps events in a list: for tests of the core without a realtime hub. Like the hub, it
    keeps the events of one fact (:attr:`Event.once`) at most once."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.once: set[str] = set()

    async def publish(self, events: list[Event]) -> bool:
        """Keep the events in order, for tests; a fact already kept is skipped."""
        new_facts = {e.once for e in events if e.once is not None and e.once not in self.once}
        self.events.extend(e for e in events if e.once is None or e.once in new_facts)
        self.once |= new_facts
        return True


def new_message_events(
    message: dict[str, Any], conversation: dict[str, Any], *, received_at: float | None = None
) -> list[Event]:
    """A new message: chat_message (+ the customer/owner notification) + conversation_updated."""
    ws_message = serializers.ws_message(message)
    ws_conversation = serializers.conversation(conversation)
    channel_id = str(conversation["channel_id"])
    conversation_id = str(conversation["_id"])
    at = received_at if received_at is not None else time.time()
    once = f"msg:{message['_id']}"
    chat: dict[str, Any] = {"message": ws_message}
    events = []
    if message["type"] == TYPE_CUSTOMER:
        events.append(Event(CHAT_MESSAGE, channel_id, conversation_id, chat, at))
        events.append(
            Event(
                NEW_CUSTOMER_MESSAGE,
                channel_id,
                conversation_id,
                {"message": ws_message, "conversation": ws_conversation},
                at,
            )
        )
    else:
        from_instagram_app = message.get("source") == SOURCE_INSTAGRAM_DIRECT
        chat["external_send_result"] = {
            "success": True,
            "source": SOURCE_INSTAGRAM_DIRECT if from_instagram_app else SOURCE_APP,
        }
        if message.get("delivery_status") == "pending":
            # Stored before Instagram was called (API.md §2b): the outcome follows as message_updated.
            chat["external_send_result"] = {"success": None, "source": message.get("source"), "status": "pending"}
        events.append(Event(CHAT_MESSAGE, channel_id, conversation_id, chat, at))
        if from_instagram_app:
            events.append(
                Event(
                    OWNER_MESSAGE_NOTIFICATION,
                    channel_id,
                    conversation_id,
                    {"message": ws_message, "conversation": ws_conversation},
                    at,
                )
            )
    events.append(Event(CONVERSATION_UPDATED, channel_id, conversation_id, {"conversation": ws_conversation}, at))
    for event in events:
        event.once = once
    return events


def message_updated(message: dict[str, Any], changes: list[str], *, received_at: float | None = None) -> Event:
    """``message_updated`` naming the changed fields."""
    return Event(
        MESSAGE_UPDATED,
        str(message["channel_id"]),
        str(message["conversation_id"]),
        {"message": serializers.ws_message(message), "changes": changes},
        received_at if received_at is not None else time.time(),
    )


def message_deleted(message: dict[str, Any], *, received_at: float | None = None) -> Event:
    """``message_deleted`` (an unsend)."""
    return Event(
        MESSAGE_DELETED,
        str(message["channel_id"]),
        str(message["conversation_id"]),
        {"message_id": str(message["_id"])},
        received_at if received_at is not None else time.time(),
    )


def conversation_updated(conversation: dict[str, Any], *, received_at: float | None = None) -> Event:
    """``conversation_updated`` with the conversation as API.md §3 shows it."""
    return Event(
        CONVERSATION_UPDATED,
        str(conversation["channel_id"]),
        str(conversation["_id"]),
        {"conversation": serializers.conversation(conversation)},
        received_at if received_at is not None else time.time(),
    )


def channel_updated(channel: dict[str, Any]) -> Event:
    """``channel_updated``: the channel as the inbox shows it (never its token) — its
    ``needs_reauth``, token expiry and subscription state changed."""
    return Event(CHANNEL_UPDATED, str(channel["_id"]), None, {"channel": serializers.channel(channel)})


def history_import(channel_id: Any, progress: dict[str, Any]) -> Event:
    """``history_import``: how far a history import (or gap repair) of the channel has got."""
    return Event(HISTORY_IMPORT, str(channel_id), None, {"history_import": progress})
