"""Reactions, edits, unsends and read receipts: what happens to a message after it arrived.

Owns the ingest pipeline's ``item_events`` handler (:class:`MessageEventHandler`) and an
after-store hook of the recorder (:class:`MessageArrivalHook`).

* **reaction / unreact** — one reaction per person on the reacted message
  (``{"by", "reaction", "emoji", "at"}``): a react replaces that person's reaction, an
  unreact removes it; an event older than that person's last one changes nothing.
* **edit** — new text, ``edited_at``, the previous text appended to ``edit_history``;
  ordered and made idempotent by ``num_edit`` (int or string on the wire).
* **unsend** — ``is_deleted``, content and attachments cleared, stored media deleted from
  GridFS (and pending downloads cancelled), the conversation's ``last_message`` refreshed.
* **read** — ``read_at`` on every message of the other side up to the one read.

Every change is one guarded atomic update (:mod:`models.message_updates`), so a
redelivery changes nothing. Real changes reach the inbox through the recorder's sink as
``message_updated`` (with ``changes``) or ``message_deleted``, under the change's once key
(``chg:<key>``). A redelivery of a change that is in effect on the stored messages (a reaction,
an unreact, an edit, an unsend, a read receipt whose time the messages carry) publishes its
events again under the same key: the hub logs it only if the first attempt
stopped before publishing, so the event is neither lost nor repeated.

An event about a message we never stored is not an error: it is kept in
``orphan_events`` (answered with ``message_id: null``) and applied when the message
arrives later — :class:`MessageArrivalHook` does that before the message's own
``chat_message`` goes out, so the inbox sees the message as it is now. The same hook
links a swipe-reply to the message it answers (``reply_to.message_id``).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from bson import ObjectId

from models.messages import OUTBOUND_TYPES, TYPE_CUSTOMER
from models.store import Store
from models.timeutil import iso
from server.inbox import events as ev
from server.inbox.threads import channel_account_ids
from server.ingest import parse as wp
from server.ops.metrics import Metrics

log = logging.getLogger("igsync.webhook")

REACTION = "reaction"
UNREACT = "unreact"
READ = "read"
EDIT = "edit"
UNSEND = "unsend"


class MediaPurge(Protocol):
    """What an unsend needs of the media service: its stored copies gone (server.media)."""

    async def remove_for_message(self, message_id: ObjectId) -> int:
        """Cancel the message's downloads and delete its stored copies (idempotent)."""
        ...


@dataclass(frozen=True)
class Change:
    """One reaction/read/edit/unsend, as plain data — from a webhook item or an orphan row."""

    kind: str  # the response's "event": reaction | unreact | read | edit | unsend
    channel_id: ObjectId
    target_mid: str
    sender_id: str
    from_owner: bool
    at: dt.datetime
    reaction: str | None = None
    emoji: str | None = None
    text: str | None = None
    num_edit: int | None = None

    @classmethod
    def from_item(cls, item: wp.WebhookItem, channel: dict[str, Any]) -> Change:
        """The change a webhook item describes."""
        kind = item.kind
        reaction = item.reaction or {}
        if item.kind == wp.KIND_REACTION:
            kind = UNREACT if reaction.get("action") == "unreact" else REACTION
        return cls(
            kind=kind,
            channel_id=channel["_id"],
            target_mid=item.target_mid or "",
            sender_id=item.sender_id or "",
            from_owner=item.is_echo or item.sender_id in channel_account_ids(channel),
            at=item.timestamp,
            reaction=reaction.get("reaction") if kind == REACTION else None,
            emoji=reaction.get("emoji") if kind == REACTION else None,
            text=item.content if item.kind == wp.KIND_EDIT else None,
            num_edit=item.num_edit if item.kind == wp.KIND_EDIT else None,
        )

    def key(self) -> str:
        """The identity of this event on the wire: a redelivery has the same key."""
        parts = [
            self.kind,
            str(self.channel_id),
            self.target_mid,
            self.sender_id,
            iso(self.at) or "",
            self.reaction or "",
            self.emoji or "",
            self.text or "",
            "" if self.num_edit is None else str(self.num_edit),
        ]
        return hashlib.sha256("\x1f".join(parts).encode("utf-8")).hexdigest()

    def to_orphan(self) -> dict[str, Any]:
        """The change as an early-event row, kept until its message arrives."""
        return {
            "key": self.key(),
            "kind": self.kind,
            "channel_id": self.channel_id,
            "target_mid": self.target_mid,
            "sender_id": self.sender_id,
            "from_owner": self.from_owner,
            "at": self.at,
            "data": {"reaction": self.reaction, "emoji": self.emoji, "text": self.text, "num_edit": self.num_edit},
        }

    @classmethod
    def from_orphan(cls, doc: dict[str, Any]) -> Change:
        """The change an early-event row kept."""
        data = doc.get("data") or {}
        return cls(
            kind=doc["kind"],
            channel_id=doc["channel_id"],
            target_mid=doc["target_mid"],
            sender_id=doc["sender_id"],
            from_owner=bool(doc.get("from_owner")),
            at=doc["at"],
            reaction=data.get("reaction"),
            emoji=data.get("emoji"),
            text=data.get("text"),
            num_edit=data.get("num_edit"),
        )


@dataclass
class Applied:
    """What applying a :class:`Change` did."""

    message: dict[str, Any] | None  # the target message as it is now; None: never stored
    changes: list[str] = field(default_factory=list)
    updated: list[dict[str, Any]] = field(default_factory=list)  # messages this call changed
    deleted: bool = False  # this call unsent the message
    conversation: dict[str, Any] | None = None  # set when its last_message summary changed


class MessageEventHandler:
    """The ``item_events`` handler of :class:`server.ingest.pipeline.IngestPipeline`."""

    def __init__(
        self,
        store: Store,
        publish: Callable[[list[ev.Event]], Awaitable[None]],
        metrics: Metrics,
        media: MediaPurge | None = None,
    ) -> None:
        self.store = store
        self.publish = publish
        self.metrics = metrics
        self.media = media

    async def handle(self, item: wp.WebhookItem, channel: dict[str, Any], *, received_at: float) -> dict[str, Any]:
        """Apply one change item; keep it for later when its message is not stored yet."""
        change = Change.from_item(item, channel)
        applied = await self.apply(change)
        orphan = applied.message is None
        if orphan:
            if await self.store.orphan_events.record(change.to_orphan()):
                self.metrics.orphan_events.labels(kind=change.kind).inc()
            # The message may have been stored between our look-up and the record above, its
            # arrival hook not seeing this event yet: look once more. Applying is idempotent,
            # so the hook and this path may both try.
            if await self.store.message_updates.find_by_mid(change.channel_id, change.target_mid) is not None:
                applied = await self.apply(change)
                if applied.message is not None:
                    await self.store.orphan_events.mark_applied_key(
                        applied.message["channel_id"], change.key(), applied.message["_id"]
                    )
        events = self.events(applied, received_at=received_at)
        if not events and applied.message is not None:
            # Nothing changed now: a redelivery. Its events may never have gone out (the first
            # attempt stopped between the update and the publish); they go again under the same
            # once key, and the event log drops them if they did.
            events = await self._again(change, applied.message, received_at)
        for event in events:
            event.once = f"chg:{change.key()}"
        await self.publish(events)
        message_id = None if applied.message is None else str(applied.message["_id"])
        # The item's one INFO line (with its structured fields) is logged by the ingest pipeline.
        log.debug(
            "webhook item: %s channel=%s target_mid=%s message=%s changes=%s%s",
            change.kind,
            change.channel_id,
            change.target_mid,
            message_id,
            ",".join(applied.changes) or "none",
            " (orphan: kept until the message arrives)" if applied.message is None else "",
        )
        return {"status": "success", "event": change.kind, "message_id": message_id, "changes": applied.changes}

    # -- applying ------------------------------------------------------------------------

    async def apply(self, change: Change, *, refresh_conversation: bool = True) -> Applied:
        """Apply a change to its stored message; what changed."""
        if change.kind in (REACTION, UNREACT):
            return await self._reaction(change)
        if change.kind == EDIT:
            return await self._edit(change, refresh_conversation)
        if change.kind == UNSEND:
            return await self._unsend(change, refresh_conversation)
        if change.kind == READ:
            return await self._read(change)
        raise ValueError(f"not a message event: {change.kind}")

    async def _target(self, change: Change) -> dict[str, Any] | None:
        return await self.store.message_updates.find_by_mid(change.channel_id, change.target_mid)

    async def _reaction(self, change: Change) -> Applied:
        entry = None
        if change.kind == REACTION:
            entry = {"by": change.sender_id, "reaction": change.reaction, "emoji": change.emoji, "at": change.at}
        outcome = await self.store.message_updates.set_reaction(
            change.channel_id, change.target_mid, change.sender_id, entry, change.at
        )
        if outcome.applied:
            return Applied(outcome.doc, ["reactions"], [outcome.doc])
        return Applied(outcome.doc)

    async def _edit(self, change: Change, refresh_conversation: bool) -> Applied:
        if not change.text:
            # Instagram cannot edit a message to nothing (that is an unsend); nothing to apply.
            return Applied(await self._target(change))
        outcome, mode = await self.store.message_updates.apply_edit(
            change.channel_id, change.target_mid, change.text, change.num_edit, change.at
        )
        applied = Applied(outcome.doc)
        if outcome.applied:
            applied.changes = ["content", "edited_at", "edit_history"] if mode == "current" else ["edit_history"]
            applied.updated = [outcome.doc]
        if applied.message is not None and refresh_conversation and not applied.message.get("is_deleted"):
            applied.conversation = await self.store.conversations.refresh_summary_if_stale(
                applied.message["conversation_id"], applied.message
            )
        return applied

    async def _unsend(self, change: Change, refresh_conversation: bool) -> Applied:
        outcome = await self.store.message_updates.mark_unsent(change.channel_id, change.target_mid, change.at)
        applied = Applied(outcome.doc)
        message = outcome.doc
        if message is None:
            return applied
        if outcome.applied:
            applied.changes = ["is_deleted", "content"]
            applied.updated = [message]
            applied.deleted = True
        if message.get("is_deleted"):
            # Also on a redelivery: a first attempt cut short by a MongoDB failure is finished now.
            if self.media is not None:
                await self.media.remove_for_message(message["_id"])
            if refresh_conversation:
                applied.conversation = await self.store.conversations.refresh_summary_if_stale(
                    message["conversation_id"], message
                )
        return applied

    async def _read(self, change: Change) -> Applied:
        target = await self._target(change)
        if target is None:
            return Applied(None)
        # The reader has seen what the other side sent: the owner's messages when a customer reads.
        types = (TYPE_CUSTOMER,) if change.from_owner else OUTBOUND_TYPES
        updated = await self.store.message_updates.mark_read(
            target["channel_id"], target["conversation_id"], types, target["sent_at"], change.at
        )
        current = next((d for d in updated if d["_id"] == target["_id"]), target)
        return Applied(current, ["read_at"] if updated else [], updated)

    # -- events --------------------------------------------------------------------------

    @staticmethod
    def events(applied: Applied, *, received_at: float | None = None, skip: ObjectId | None = None) -> list[ev.Event]:
        """The inbox events of an applied change."""
        out: list[ev.Event] = []
        for doc in applied.updated:
            if doc["_id"] == skip:
                continue
            if applied.deleted:
                out.append(ev.message_deleted(doc, received_at=received_at))
            else:
                out.append(ev.message_updated(doc, applied.changes, received_at=received_at))
        if applied.conversation is not None:
            out.append(ev.conversation_updated(applied.conversation, received_at=received_at))
        return out

    async def _again(self, change: Change, message: dict[str, Any], received_at: float) -> list[ev.Event]:
        """The events of a change that is in effect on the stored messages (none if not)."""
        if change.kind == READ:
            types = (TYPE_CUSTOMER,) if change.from_owner else OUTBOUND_TYPES
            # The messages this receipt marked carry its time (a later receipt marks none of them).
            read = await self.store.message_updates.read_by(
                message["channel_id"], message["conversation_id"], types, message["sent_at"], change.at
            )
            return [ev.message_updated(doc, ["read_at"], received_at=received_at) for doc in read]
        if not _in_effect(change, message):
            return []
        if change.kind == UNSEND:
            return [ev.message_deleted(message, received_at=received_at)]
        reacted = change.kind in (REACTION, UNREACT)
        changes = ["reactions"] if reacted else ["content", "edited_at", "edit_history"]
        return [ev.message_updated(message, changes, received_at=received_at)]


def _in_effect(change: Change, message: dict[str, Any]) -> bool:
    """Whether the stored message shows this very change (so its event is due, once)."""
    if change.kind == REACTION:
        return any(r.get("by") == change.sender_id and r.get("at") == change.at for r in message.get("reactions") or [])
    if change.kind == UNREACT:
        # No reaction of theirs, and this unreact is their latest reaction event.
        gone = not any(r.get("by") == change.sender_id for r in message.get("reactions") or [])
        clock = [c.get("at") for c in message.get("reaction_clock") or [] if c.get("by") == change.sender_id]
        return gone and clock == [change.at]
    if change.kind == EDIT:
        return bool(change.text) and message.get("edited_at") == change.at and message.get("content") == change.text
    if change.kind == UNSEND:
        return bool(message.get("is_deleted"))
    return False


class MessageArrivalHook:
    """After-store hook: link a reply to its message and apply events that came first.

    It runs between the insert and the conversation update, and updates the recorder's
    in-memory message too, so the ``chat_message`` that follows shows the message with
    the reactions, edits, read receipt or unsend that arrived before it did."""

    def __init__(self, store: Store, handler: MessageEventHandler) -> None:
        self.store = store
        self.handler = handler

    async def after_message_stored(
        self, message: dict[str, Any], conversation_id: Any, *, early_events: bool | None = None
    ) -> None:
        """Link a reply and apply the events that arrived before this message did (read only
        when the insert's own probe did not already say there are none)."""
        changed = await self._link_reply(message)
        orphans = (
            []
            if early_events is False
            else await self.store.orphan_events.pending_for(message["channel_id"], message.get("mids") or [])
        )
        events: list[ev.Event] = []
        for row in orphans:
            applied = await self.handler.apply(Change.from_orphan(row), refresh_conversation=False)
            changed = changed or bool(applied.updated)
            # Earlier messages a replayed read receipt reached are news for the inbox; this
            # message itself is announced by its own chat_message.
            events.extend(self.handler.events(applied, skip=message["_id"]))
        if orphans:
            await self.store.orphan_events.mark_applied(
                message["channel_id"], [row["_id"] for row in orphans], message["_id"]
            )
            log.info("applied %d earlier event(s) to message %s on arrival", len(orphans), message["_id"])
        if changed:
            fresh = await self.store.message_updates.get(message["_id"], message["channel_id"])
            if fresh is not None:
                message.update(fresh)
        if events:
            await self.handler.publish(events)

    def idle_for(self, message: dict[str, Any]) -> bool:
        """No reply to link: with no early events there is nothing to do."""
        return not _unlinked_reply(message)

    async def _link_reply(self, message: dict[str, Any]) -> bool:
        if not _unlinked_reply(message):
            return False
        reply_to = message["reply_to"]
        target = await self.store.message_updates.find_by_mid(message["channel_id"], reply_to["mid"])
        if target is None:
            return False
        return (await self.store.message_updates.link_reply(message["_id"], target["_id"])).applied


def _unlinked_reply(message: dict[str, Any]) -> bool:
    """Whether ``message`` replies to a message by mid, not yet linked to its id."""
    reply_to = message.get("reply_to") or {}
    return bool(reply_to.get("mid")) and not reply_to.get("message_id")
