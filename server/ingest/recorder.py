"""Storing one message and everything that follows from it, in a repairable order.

Owns the write sequence every new message goes through — whether it came from a webhook
or from mark-sent:

0. let the before-store hooks mark the document (the trigger outbox's mark goes in with it);
1. insert the message (the unique ``mids`` index decides "new or duplicate") and ask, after
   it, whether events about it came first (``orphan_events``) — in the insert's own command
   when it goes alone, :meth:`models.group_commit.GroupInserter.insert`; when the hooks of
   step 2 have nothing to do for it (no reply to link, no media) and the process remembers
   the conversation's state, step 3 goes last in that same ordered command, run only when
   no event came first — the order of the steps is kept, in one round trip;
2. run the after-store hooks (durable follow-up work: early events applied, media jobs),
   each idempotent per message, told that answer;
3. apply the message to its conversation (one guarded, idempotent update);
4. mark earlier customer messages answered (outbound message on an unanswered thread);
5. publish the inbox events.

If MongoDB fails after step 1, the caller answers 503 and Meta redelivers. The redelivery
hits the unique index at step 1 and :meth:`MessageRecorder.record` *repairs*: when the
conversation has not seen the message yet, steps 2–5 run now. So a half-written attempt
is finished by its redelivery.

When the conversation has seen it, step 5 may still be missing: the process can stop (or
Redis can fail) between the conversation update and the publish, and nothing in MongoDB
says which. So every duplicate publishes the message's events again; they carry the
message's *once* key (:attr:`server.inbox.events.Event.once`), and the hub logs only those
that never were. A redelivery thus completes a message's events exactly once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Protocol

from pymongo import UpdateMany
from pymongo.errors import DuplicateKeyError

from models.conversations import STATUS_NEEDS_REPLY
from models.group_commit import Inserted, LeadInsert, Shortcut
from models.messages import IMPORTED_BACKFILL, TYPE_CUSTOMER, is_mid_conflict
from models.store import Store
from server.inbox import events as ev

log = logging.getLogger("igsync.recorder")


class AfterStoreHook(Protocol):
    """Durable follow-up work for a stored message. Must be idempotent per message id:
    it runs again when a redelivery repairs a half-written attempt."""

    async def after_message_stored(
        self, message: dict[str, Any], conversation_id: Any, *, early_events: bool | None = None
    ) -> None:
        """Called after the message is inserted, before its conversation is updated.
        ``early_events``: whether events about it were kept before it arrived, as asked right
        after its insert; None when not asked (a batched insert, a repair)."""
        ...

    def idle_for(self, message: dict[str, Any]) -> bool:
        """Whether, with ``early_events=False``, the hook would do nothing for ``message`` (then
        the recorder may update the conversation in the insert's own command and not call it)."""
        ...


class BeforeStoreHook(Protocol):
    """Marks a message document before its insert, so that follow-up work is recorded in the
    same write as the message itself (the trigger outbox): no extra round trip, and no state
    where the message exists without its mark."""

    async def before_message_stored(self, message: dict[str, Any]) -> None:
        """Called before the message is inserted; may add fields to it."""
        ...


@dataclass
class Recorded:
    message: dict[str, Any]
    # The conversation after this message was applied; None when it had been applied before.
    conversation: dict[str, Any] | None
    duplicate: bool = False
    # Stored, applied and its events logged by this call: a redelivery has nothing to finish.
    settled: bool = False


class MessageRecorder:
    def __init__(
        self,
        store: Store,
        publisher: ev.SafePublisher,
        hooks: list[AfterStoreHook] | None = None,
        before_hooks: list[BeforeStoreHook] | None = None,
    ) -> None:
        self.store = store
        self.publisher = publisher
        self.hooks: list[AfterStoreHook] = list(hooks or [])
        self.before_hooks: list[BeforeStoreHook] = list(before_hooks or [])

    async def record(self, message: dict[str, Any], *, received_at: float, lead: LeadInsert | None = None) -> Recorded:
        """Store ``message`` once; a mid already known answers ``duplicate=True``. ``lead``: a
        write that must succeed first, sent with the insert (``LeadRefused`` when it fails)."""
        for before in self.before_hooks:
            await before.before_message_stored(message)
        shortcut = self._conversation_shortcut(message)
        try:
            inserted = await self._insert(message, lead, shortcut)
        except DuplicateKeyError as exc:
            if not is_mid_conflict(exc):
                raise
            return await self.complete_stored(message, received_at)
        if shortcut is not None:
            conversation = self.store.conversations.after_known_apply(shortcut, inserted.follower_applied)
            if conversation is not None:
                # Steps 1 and 3 went in one command; step 2 had nothing to do (no early event).
                settled = await self._after_apply(
                    message, conversation, received_at, answered=bool(inserted.trailer_ran)
                )
                return Recorded(message, conversation, settled=settled)
        await self.run_hooks(message, early_events=inserted.probe_matched)
        conversation, settled = await self._apply(message, received_at)
        return Recorded(message, conversation, settled=settled)

    def _conversation_shortcut(self, message: dict[str, Any]) -> Shortcut | None:
        """Step 3 written for the conversation's remembered state, to go with the insert —
        when it can: a client bulkWrite, a probe to run it behind, hooks with nothing to do."""
        if not self.store.messages.sends_followers or not message.get("mids"):
            return None
        if not all(hook.idle_for(message) for hook in self.hooks):
            return None
        return self.store.conversations.known_apply(message["conversation_id"], message)

    async def record_new(self, message: dict[str, Any], *, received_at: float) -> Recorded:
        """Steps 1–5 for a message whose collisions the caller resolves itself: every
        ``DuplicateKeyError`` propagates (mark-sent turns a collision into an adoption)."""
        inserted = await self._insert(message)
        await self.run_hooks(message, early_events=inserted.probe_matched)
        conversation = await self.apply(message, received_at=received_at)
        return Recorded(message, conversation)

    async def _insert(
        self, message: dict[str, Any], lead: LeadInsert | None = None, shortcut: Shortcut | None = None
    ) -> Inserted:
        """Step 1: the insert, whether events about the message came first (None: not asked),
        and whether ``shortcut`` (step 3) went with it and applied.

        Why the question is asked after the insert: an early event is kept, then its handler
        looks for the message; a message is inserted, then looks for early events. Each writes
        before it reads, so at least one of them sees the other (server/ingest/changes.py)."""
        probe = self.store.orphan_events.arrival_probe(message["channel_id"], message.get("mids") or [])
        follower = trailer = None
        if shortcut is not None:
            follower, trailer = self.store.conversations.as_update(shortcut), self._answering(message, shortcut)
        return await self.store.messages.insert_then(
            message, probe=probe, lead=lead, follower=follower, trailer=trailer
        )

    def _answering(self, message: dict[str, Any], shortcut: Shortcut) -> UpdateMany | None:
        """Step 4 for an owner message whose conversation waits for a reply in the remembered
        state, to run after the shortcut in the insert's command (None: nothing to mark).

        It runs even if the shortcut misses (a stale state; no error stops the command), when
        the conversation may not have been waiting after all: it then marks the customer
        messages sent before this owner message answered — which an owner reply after them is;
        usually there are none (a conversation not waiting has none unanswered)."""
        if message["type"] == TYPE_CUSTOMER or shortcut.after["last_apply"]["prev_status"] != STATUS_NEEDS_REPLY:
            return None
        return self.store.messages.answered_update(
            message["channel_id"], message["conversation_id"], message["sent_at"]
        )

    async def complete_stored(self, incoming: dict[str, Any], received_at: float) -> Recorded:
        """``incoming`` is stored already (the index said so): the message holding one of its
        mids, finished by :meth:`complete` if its writer stopped half-way."""
        existing = None
        for mid in incoming.get("mids") or []:
            existing = await self.store.messages.find_by_mid(incoming["channel_id"], mid)
            if existing is not None:
                break
        if existing is None:
            # The index said "exists" but the read does not see it: the other writer's insert
            # is not visible yet (or was rolled back). Let the caller retry via 503/redelivery.
            raise DuplicateKeyError("message with this mid is not readable yet")
        return await self.complete(existing, received_at=received_at)

    async def complete(self, existing: dict[str, Any], *, received_at: float) -> Recorded:
        """A message found already stored: finish steps 2–5 if its conversation has not seen it
        (a half-written attempt), else nothing. Always ``duplicate=True``."""
        conversations = self.store.conversations
        conversation = conversations.remembered_with(existing["conversation_id"], existing["_id"])
        if conversation is None:
            conversation = await conversations.get(existing["conversation_id"], existing["channel_id"])
        if conversation is not None and existing["_id"] not in (conversation.get("recent_message_ids") or []):
            log.info("repairing a half-written message mid=%s", existing.get("mid"))
            await self.run_hooks(existing)
            applied = await self.apply(existing, received_at=received_at)
            return Recorded(existing, applied, duplicate=True)
        if conversation is not None and "merged_into" not in existing and existing.get("imported") != IMPORTED_BACKFILL:
            # Its events may never have gone out (see the module docstring); those that did are
            # skipped by their once key. A merged message's events went out with its survivor.
            await self.publish(ev.new_message_events(existing, conversation, received_at=received_at))
        return Recorded(existing, None, duplicate=True)

    async def run_hooks(self, message: dict[str, Any], *, early_events: bool | None = None) -> None:
        """Run the after-store hooks on a stored message."""
        for hook in self.hooks:
            await hook.after_message_stored(message, message["conversation_id"], early_events=early_events)

    async def apply(self, message: dict[str, Any], *, received_at: float) -> dict[str, Any] | None:
        """Update the conversation with the message and publish its events."""
        return (await self._apply(message, received_at))[0]

    async def _apply(self, message: dict[str, Any], received_at: float) -> tuple[dict[str, Any] | None, bool]:
        """:meth:`apply`, and whether its events are settled (False when it had been applied)."""
        conversation = await self.store.conversations.apply_message(message["conversation_id"], message)
        if conversation is None:
            return None, False
        return conversation, await self._after_apply(message, conversation, received_at)

    async def _after_apply(
        self, message: dict[str, Any], conversation: dict[str, Any], received_at: float, *, answered: bool = False
    ) -> bool:
        """Steps 4 and 5, once the message is applied to ``conversation`` (``answered``: step 4
        went in the insert's command); whether its events are settled."""
        if message["type"] != TYPE_CUSTOMER and conversation.get("prev_status") == STATUS_NEEDS_REPLY and not answered:
            await self.store.messages.mark_answered(
                message["channel_id"], message["conversation_id"], message["sent_at"]
            )
        if message.get("imported") == IMPORTED_BACKFILL:
            return True  # a history import announces itself once (``history_import``), not per old message
        return await self.publish(ev.new_message_events(message, conversation, received_at=received_at))

    async def publish(self, events: list[ev.Event]) -> bool:
        """Hand events to the sink; never fails the write they follow (:class:`~server.inbox.events.SafePublisher`).
        True when they are settled (in their channels' logs)."""
        return await self.publisher.publish(events)
