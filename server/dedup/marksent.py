"""``POST /api/v1/messages/mark-sent`` (API.md §2): an internal sender reports an outbound message.

Owns the mark-sent side of echo dedup (the echo side is :mod:`server.dedup.echo`):

1. authorize (internal tokens, constant time), validate (422 with ``fields``), find the
   conversation (by id, or by account + customer — created when the thread predates igsync);
2. ``client_message_id`` seen before → that message, ``200`` (idempotent retries);
3. register the send in the ``(conversation, text)`` pairing document (one compare-and-swap);
4. insert the outbound message with the send's ``send_id`` (unique ``pair_key``) and its mids (plus the mid of an
   echo that came first). A collision means the echo is already stored: *adopt* it — turn
   that Instagram-app message into this outbound one (``200``, ``adopted: true``) — instead of
   storing a second message;
5. otherwise the recorder finishes the write (conversation ``answered``, earlier customer
   messages ``is_answered``, events) → ``201``.

The seed's Redis marks are set once per send right after step 3 (the send is known to MongoDB
and outstanding from then on); they only name the dedup layer, MongoDB decides.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import orjson
from bson import ObjectId
from pymongo.errors import DuplicateKeyError, PyMongoError

from models import serializers
from models.echo_pairs import EchoPairContention
from models.ids import as_object_id
from models.messages import TYPE_AI, conflict_key
from models.store import Store
from models.timeutil import utcnow
from server.api.auth import INTERNAL, Authenticator
from server.api.errors import ApiError, bad_request, not_found
from server.api.schemas import MARK_SENT_INPUT, load
from server.dedup.echo import LAYER_ADOPTED, is_native_looking
from server.dedup.marks import SentMarks
from server.dedup.pairing import EchoPairing
from server.inbox import events as ev
from server.inbox.threads import ChannelCache, ThreadResolver, channel_account_ids
from server.ingest.pipeline import NewCustomerHook, content_hash
from server.ingest.recorder import MessageRecorder
from server.ops.metrics import Metrics

log = logging.getLogger("igsync.marksent")

SOURCE_AI = "ai"
SOURCE_APP = "app"
OUTCOME_CREATED = "created"
OUTCOME_IDEMPOTENT = "idempotent"
OUTCOME_ADOPTED = "adopted"
# Fields an adoption may change on the echo's message; ``message_updated`` names those it did.
ADOPTION_FIELDS = ("type", "source", "is_ai_response", "client_message_id", "media_url")
# Each retry means a concurrent writer (the echo, a retried call) just changed the outcome.
MAX_STORE_ATTEMPTS = 16


@dataclass
class MarkSentResult:
    status: int
    outcome: str
    message: dict[str, Any]

    @property
    def body(self) -> dict[str, Any]:
        """The response body of API.md §2."""
        return {
            "status": "success",
            "message": serializers.ws_message(self.message),
            "adopted": bool(self.message.get("adopted")),
        }


@dataclass(frozen=True)
class Target:
    channel_id: ObjectId
    conversation_id: ObjectId
    customer_id: ObjectId


class MarkSentService:
    def __init__(
        self,
        *,
        store: Store,
        auth: Authenticator,
        channels: ChannelCache,
        threads: ThreadResolver,
        recorder: MessageRecorder,
        pairing: EchoPairing,
        marks: SentMarks,
        metrics: Metrics,
        new_customer_hooks: list[NewCustomerHook] | None = None,
    ) -> None:
        self.store = store
        self.auth = auth
        self.channels = channels
        self.threads = threads
        self.recorder = recorder
        self.pairing = pairing
        self.marks = marks
        self.metrics = metrics
        # The ingest pipeline's list (shared, so hooks added later apply here too).
        self.new_customer_hooks = new_customer_hooks if new_customer_hooks is not None else []

    # -- the request -------------------------------------------------------------------

    async def handle(self, authorization: str | None, body: bytes) -> MarkSentResult:
        """Auth, parse, record; every outcome counted in ``igsync_mark_sent_total``."""
        received_at = time.time()
        outcome = "error"
        try:
            await self.auth.require(authorization, INTERNAL)
        except ApiError:
            self.metrics.mark_sent.labels(outcome="unauthorized").inc()
            raise
        try:
            data = parse_input(body)
            result = await self.mark_sent(data, received_at=received_at)
            outcome = result.outcome
            return result
        except ApiError as exc:
            outcome = "not_found" if exc.status == 404 else "invalid"
            raise
        except PyMongoError as exc:
            self.metrics.store_errors.labels(store="mongo").inc()
            log.error("mark-sent: MongoDB failed (%s); answering 503", type(exc).__name__)
            raise ApiError(503, "store_unavailable", "The message store is unavailable; retry later.") from None
        finally:
            self.metrics.mark_sent.labels(outcome=outcome).inc()

    async def mark_sent(self, data: dict[str, Any], *, received_at: float) -> MarkSentResult:
        """Record one validated mark-sent; see the module docstring for the steps."""
        target = await self.resolve_target(data)
        cmid = data.get("client_message_id")
        if cmid is not None:
            existing = await self.store.messages.find_by_client_message_id(
                target.channel_id, target.conversation_id, cmid
            )
            if existing is not None:
                return await self._existing(existing, received_at)
        mids = list(dict.fromkeys(data["mids"]))
        # The namespace keeps a caller's ids apart from generated ones.
        send_id = f"c:{cmid}" if cmid is not None else f"s:{ObjectId()}"
        match = await self.pairing.register_send(target.conversation_id, content_hash(data["content"]), send_id, mids)
        if match.first:
            if match.echo_mids:
                self.metrics.echo_delay.observe(0.0)  # the echo came first
            # The seed's Redis marks, once per send, as soon as MongoDB knows the send: from now
            # on it is outstanding, also while its message is still being stored.
            unechoed = [m for m in mids if m not in match.echo_mids]
            await self.marks.mark(target.conversation_id, data["content"], unechoed, outstanding=not match.echo_mids)
        doc = outbound_message(data, target, send_id, mids, list(match.echo_mids))
        result = await self.record_outbound(doc, send_id, received_at)
        log.info(
            "mark-sent: %s conversation=%s message=%s type=%s mids=%d echo_first=%s",
            result.outcome,
            target.conversation_id,
            result.message["_id"],
            result.message["type"],
            len(mids),
            bool(match.echo_mids),
            extra={"outcome": result.outcome, "conversation_id": str(target.conversation_id)},
        )
        return result

    async def resolve_target(self, data: dict[str, Any]) -> Target:
        """The conversation a mark-sent is about, by id or by (account, customer); 404 when unknown."""
        if "conversation_id" in data:
            oid = as_object_id(data["conversation_id"])
            conversation = None if oid is None else await self.store.conversations.get(oid)
            if conversation is None:
                raise not_found("conversation")
            return Target(conversation["channel_id"], conversation["_id"], conversation["customer_id"])
        channel = await self.channels.lookup(data["account_id"])
        if channel is None:
            raise not_found("channel")
        customer_ig = data["customer_instagram_id"]
        if customer_ig in channel_account_ids(channel):
            # A conflict with the channel as stored (its ids), not a malformed field.
            raise ApiError(409, "not_a_customer", "customer_instagram_id is the business account itself.")
        thread = await self.threads.resolve(channel["_id"], customer_ig)
        if thread.customer_created and thread.customer is not None:
            for hook in self.new_customer_hooks:
                hook.new_customer(channel, thread.customer)
        return Target(channel["_id"], thread.conversation_id, thread.customer_id)

    # -- store or adopt ----------------------------------------------------------------

    async def _existing(self, message: dict[str, Any], received_at: float) -> MarkSentResult:
        """A retried call: the same message, after finishing it if the first try was cut short."""
        await self.recorder.complete(message, received_at=received_at)
        return MarkSentResult(200, OUTCOME_IDEMPOTENT, message)

    async def record_outbound(self, doc: dict[str, Any], send_id: str, received_at: float) -> MarkSentResult:
        """Store an outbound message of send ``send_id`` once: inserted (201), the message an
        earlier call with the same ``client_message_id`` stored (200), or the echo's message
        adopted (200). Also the store step of sends through igsync (:mod:`server.outbound`)."""
        for _ in range(MAX_STORE_ATTEMPTS):
            try:
                await self.recorder.record_new(doc, received_at=received_at)
            except DuplicateKeyError as exc:
                if conflict_key(exc) == "client_key":
                    existing = await self.store.messages.find_by_client_message_id(
                        doc["channel_id"], doc["conversation_id"], doc["client_message_id"]
                    )
                    if existing is not None:
                        return await self._existing(existing, received_at)
                    continue
                resolved = await self._resolve_collision(doc, send_id, received_at)
                if resolved is not None:
                    return resolved
                continue
            return MarkSentResult(201, OUTCOME_CREATED, doc)
        raise EchoPairContention(f"mark-sent {send_id} kept colliding; retry")

    async def _resolve_collision(self, doc: dict[str, Any], send_id: str, received_at: float) -> MarkSentResult | None:
        """The insert collided on the send's ``pair_key`` or a mid: decide against the messages there.
        None means "state changed, insert again" (``doc`` may have been narrowed)."""
        holders = await self.store.messages.find_collisions(
            doc["channel_id"], doc["conversation_id"], doc["mids"], send_id
        )
        if not holders:
            return None  # the winner's write is not visible yet: try again
        for holder in holders:
            if holder.get("send_id") == send_id and not is_native_looking(holder) and "merged_into" not in holder:
                # Ours already: a concurrent twin of this call stored or adopted it.
                outcome = OUTCOME_ADOPTED if holder.get("adopted") else OUTCOME_IDEMPOTENT
                await self.recorder.complete(holder, received_at=received_at)
                return MarkSentResult(200, outcome, holder)
        adoptable = [h for h in holders if is_native_looking(h) and h.get("send_id") in (None, send_id)]
        if adoptable:
            return await self._adopt(doc, send_id, adoptable, holders, received_at)
        wanted = set(doc["mids"])
        for holder in holders:
            if not is_native_looking(holder) and wanted and wanted <= set(holder.get("mids") or []):
                # Another call already reported these very Instagram messages: the same send.
                await self.recorder.complete(holder, received_at=received_at)
                return MarkSentResult(200, OUTCOME_IDEMPOTENT, holder)
        # Some mids belong to another send's message (a sender mixing calls with and without
        # mids for one text; docs/dedup.md): keep them there and record this send without them.
        held = {m for h in holders for m in h.get("mids") or []}
        log.warning("mark-sent: %d mids already held by another send's message; recorded without them", len(held))
        doc["mids"] = [m for m in doc["mids"] if m not in held]
        doc["mid"] = doc["mids"][0] if doc["mids"] else None
        return None

    async def _adopt(
        self,
        doc: dict[str, Any],
        send_id: str,
        adoptable: list[dict[str, Any]],
        holders: list[dict[str, Any]],
        received_at: float,
    ) -> MarkSentResult | None:
        """Turn the echo's stored message into this outbound message (P2); fold any further
        echo of this send (a multi-mid send whose echoes all came first) into it."""
        primary = next((h for h in adoptable if h.get("send_id") == send_id), None)
        if primary is None:
            primary = next((h for h in adoptable if h.get("content") == doc["content"]), adoptable[0])
        extras = [h for h in adoptable if h["_id"] != primary["_id"]]
        held_elsewhere = {m for h in holders if h["_id"] != primary["_id"] for m in h.get("mids") or []}
        fields = {
            "type": doc["type"],
            "source": doc["source"],
            "is_ai_response": doc["is_ai_response"],
            "adopted": True,
            "adopted_at": utcnow(),
        }
        if doc.get("client_message_id") is not None:
            fields["client_message_id"] = doc["client_message_id"]
        if doc.get("media_url") and not primary.get("media_url"):
            fields["media_url"] = doc["media_url"]
        try:
            adopted = await self.store.messages.adopt(
                primary, send_id, fields, [m for m in doc["mids"] if m not in held_elsewhere]
            )
        except DuplicateKeyError:
            return None  # a mid or the client_message_id moved meanwhile: decide again
        if adopted is None:
            return None  # someone else converted or merged it first: decide again
        merged = []
        for extra in extras:
            if set(extra.get("mids") or []) & set(doc["mids"]):
                folded = await self.store.messages.merge_into(extra["_id"], adopted["_id"], adopted["channel_id"])
                if folded is not None:
                    merged.append(folded)
        self.metrics.duplicates.labels(layer=LAYER_ADOPTED).inc()
        await self._announce_adoption(primary, adopted, merged, received_at)
        return MarkSentResult(200, OUTCOME_ADOPTED, adopted)

    async def _announce_adoption(
        self,
        before: dict[str, Any],
        adopted: dict[str, Any],
        merged: list[dict[str, Any]],
        received_at: float,
    ) -> None:
        changes = [f for f in ADOPTION_FIELDS if before.get(f) != adopted.get(f)]
        events = [ev.message_updated(adopted, changes, received_at=received_at)]
        conversations = self.store.conversations
        conversation = await conversations.refresh_last_message(adopted["conversation_id"], adopted)
        for folded in merged:
            events.append(ev.message_deleted(folded, received_at=received_at))
            replaced = await conversations.refresh_last_message(
                adopted["conversation_id"], adopted, replacing=folded["_id"]
            )
            conversation = replaced or conversation
        if conversation is not None:
            events.append(ev.conversation_updated(conversation, received_at=received_at))
        await self.recorder.publish(events)


def parse_input(body: bytes) -> dict[str, Any]:
    """The validated mark-sent body (400 for JSON that is not an object, 422 per field)."""
    try:
        payload = orjson.loads(body or b"")
    except orjson.JSONDecodeError:
        raise bad_request("invalid_json", "The body is not valid JSON.") from None
    return load(MARK_SENT_INPUT, payload)


def outbound_message(
    data: dict[str, Any], target: Target, send_id: str, mids: list[str], echo_mids: list[str]
) -> dict[str, Any]:
    """The stored document of a reported outbound message (API.md WSMessage plus internal fields)."""
    now = utcnow()
    all_mids = list(dict.fromkeys(mids + echo_mids))
    is_ai = data["type"] == TYPE_AI
    media_url = data.get("media_url")
    doc: dict[str, Any] = {
        "_id": ObjectId(),
        "channel_id": target.channel_id,
        "conversation_id": target.conversation_id,
        "customer_id": target.customer_id,
        "mid": all_mids[0] if all_mids else None,
        "mids": all_mids,
        "send_id": send_id,
        "content": data["content"],
        "content_hash": content_hash(data["content"]),
        "type": data["type"],
        "source": SOURCE_AI if is_ai else SOURCE_APP,
        "message_type": data["message_type"],
        "media_url": media_url,
        "media_file": None,
        "processing_status": "pending" if media_url else "completed",
        "transcription": None,
        "is_ai_response": is_ai,
        "is_answered": True,
        "feedback": None,
        "feedback_comment": None,
        "feedback_at": None,
        "sent_at": now,
        "created_at": now,
        "reply_to": None,
        "attachments": [{"type": data["message_type"], "url": media_url}] if media_url else [],
        "reactions": [],
        "is_deleted": False,
        "edited_at": None,
        "read_at": None,
    }
    if data.get("client_message_id") is not None:
        doc["client_message_id"] = data["client_message_id"]
    return doc
