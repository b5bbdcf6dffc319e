"""Echo dedup, webhook side: an owner message from Instagram is stored once.

Owns DESIGN.md's properties P1–P5 on the *echo* side (the webhook's owner messages):
:class:`EchoDedup` is the ingest pipeline's ``owner_messages`` hook — ``mid`` → the pairing
decision (:mod:`server.dedup.pairing`, named ``cache`` or ``database`` by the Redis hints of
:mod:`server.dedup.marks`) → stored as an Instagram-app message. Mark-sent
(:mod:`server.dedup.marksent`) is the other side.

After the decision, every collision is a unique-index violation that the loser merges into
the winner: the echo of a send is inserted with the send's ``send_id`` (unique ``pair_key``),
or its mid is added to the send's message; a send whose echo came first collides with the
echo's message and *adopts* it. See ``docs/dedup.md`` for the full argument.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from typing import Any

from pymongo.errors import DuplicateKeyError

from models.echo_pairs import EchoPairContention
from models.group_commit import GuardFailed, LeadRefused
from models.messages import SOURCE_INSTAGRAM_DIRECT
from models.store import Store
from server.dedup.marks import SentMarks
from server.dedup.pairing import (
    EchoPairing,
)
from server.ingest.recorder import MessageRecorder, Recorded
from server.ops.metrics import Metrics

log = logging.getLogger("igsync.dedup")

LAYER_MID = "mid"
LAYER_CACHE = "cache"
LAYER_DATABASE = "database"
LAYER_ADOPTED = "adopted"

# Joining an echo to its send's message: each retry means the other side just wrote.
MAX_JOIN_ATTEMPTS = 16


def is_native_looking(message: dict[str, Any]) -> bool:
    """Stored as typed in the Instagram app (not, or not yet, an outbound message of ours)."""
    return message.get("source") == SOURCE_INSTAGRAM_DIRECT and "merged_into" not in message


class EchoDedup:
    """``IngestPipeline.owner_messages``: store an owner message once, or recognise it.

    Returns ``(recorded, layer)``: layer None when the message was stored now, else the dedup
    layer that recognised it (``mid``, ``cache`` or ``database``).
    """

    def __init__(
        self,
        store: Store,
        recorder: MessageRecorder,
        pairing: EchoPairing,
        marks: SentMarks,
        metrics: Metrics,
    ) -> None:
        self.store = store
        self.recorder = recorder
        self.pairing = pairing
        self.marks = marks
        self.metrics = metrics

    async def store_owner_message(self, message: dict[str, Any], *, received_at: float) -> tuple[Recorded, str | None]:
        """Store an owner message once: by mid, by pairing with a send, else as typed in the Instagram app."""
        mid = message["mid"]
        conversation_id = message["conversation_id"]
        hints = await self.marks.take_mid(mid, conversation_id, message["content"])
        if hints.send_outstanding:
            # 1. mid: a redelivery, or the echo of a mid given to mark-sent (unique index).
            existing = await self.store.messages.find_by_mid(message["channel_id"], mid)
            if existing is not None:
                if hints.sent_at is not None:
                    self.metrics.echo_delay.observe(max(0.0, time.time() - hints.sent_at))
                return await self.recorder.complete(existing, received_at=received_at), LAYER_MID
        else:
            # 2. the pairing document: does a send of this text in this conversation claim it?
            #    With no send outstanding (Redis says), the document most likely does not
            #    exist: create it without reading first, and in the same command as the
            #    message, which then follows only if the creation succeeded — the two writes
            #    of steps 2 and 3 in their order. Step 1 goes first in that command too, as
            #    the claim's guard: no claim for a mid a message already holds (a redelivery;
            #    a mark-sent whose Redis key was lost), whose fresh time could pair it with a
            #    later send of the same text. One round trip for a message typed in the app.
            claim = self.pairing.new_echo_claim(conversation_id, message["content_hash"], mid)
            claim = replace(claim, guard=self.store.messages.mid_guard(message["channel_id"], mid))
            try:
                recorded = await self.recorder.record(message, received_at=received_at, lead=claim)
            except LeadRefused as refused:
                if isinstance(refused.failure, GuardFailed):
                    return await self.recorder.complete_stored(message, received_at), LAYER_MID
                if not isinstance(refused.failure, DuplicateKeyError):
                    raise refused.failure from refused
                # The document exists after all (a send of this text, a twin): decide on it.
            else:
                return recorded, (LAYER_MID if recorded.duplicate else None)
        match = await self.pairing.register_echo(conversation_id, message["content_hash"], mid)
        if match.send_id is None:
            # 3. an Instagram-app message. A concurrent send that paired with it may have
            #    stored it already (with this mid): then the index answers "duplicate".
            recorded = await self.recorder.record(message, received_at=received_at)
            return recorded, (LAYER_MID if recorded.duplicate else None)
        if match.first and match.send_at is not None:
            self.metrics.echo_delay.observe(max(0.0, self.pairing.clock() - match.send_at))
        if match.by_mid or not match.first:
            layer = LAYER_MID
        elif await self.marks.take_send(conversation_id, message["content"]):
            layer = LAYER_CACHE
        else:
            layer = LAYER_DATABASE
        return await self._join_send(message, match.send_id, layer, received_at)

    async def _join_send(
        self, message: dict[str, Any], send_id: str, layer: str, received_at: float
    ) -> tuple[Recorded, str | None]:
        """Merge the echo into its send's message, or store it under the send's ``send_id``
        when the send's message does not exist yet (mark-sent then collides and adopts it)."""
        mid = message["mid"]
        for _ in range(MAX_JOIN_ATTEMPTS):
            try:
                holder = await self.store.messages.absorb_mid(
                    message["channel_id"], message["conversation_id"], send_id, mid
                )
            except DuplicateKeyError:
                holder = await self.store.messages.find_by_mid(message["channel_id"], mid)
                if holder is None:
                    continue
                return await self.recorder.complete(holder, received_at=received_at), LAYER_MID
            if holder is not None:
                # The send's own message, or (a concurrent twin of this echo stored it) the echo's;
                # finished here if its writer stopped half-way (conversation not updated yet).
                recorded = await self.recorder.complete(holder, received_at=received_at)
                return recorded, (LAYER_MID if is_native_looking(holder) else layer)
            try:
                recorded = await self.recorder.record({**message, "send_id": send_id}, received_at=received_at)
            except DuplicateKeyError:
                continue  # the send's message appeared in between (pair_key): absorb into it
            return recorded, (LAYER_MID if recorded.duplicate else None)
        raise EchoPairContention(f"echo {mid} could not be joined to send {send_id}; retry")
