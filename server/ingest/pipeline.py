"""The webhook ingest pipeline: a verified body in, stored messages and a response out.

Owns API.md §1 end to end except HTTP itself: signature check over the raw bytes,
parsing, per-item processing (channel → direction → customer/conversation → dedup →
store → conversation → events), the response shape, the audit record, and the mapping
of a MongoDB failure to 503. It works on bytes and plain data, so tests and
``igsync replay`` drive it without Tornado.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from typing import Any, Protocol

import orjson
from bson import ObjectId
from pymongo.errors import PyMongoError

from models.errors import document_refused, store_unavailable
from models.messages import TYPE_CUSTOMER, TYPE_SUPPORT
from models.store import Store
from models.timeutil import from_epoch_ms, iso, utcnow
from server.api.signatures import signature_ok
from server.inbox.threads import ChannelCache, Thread, ThreadResolver, channel_account_ids
from server.ingest import parse as wp
from server.ingest.audit import AuditTrail
from server.ingest.recent import RecentlyStored
from server.ingest.recorder import MessageRecorder, Recorded
from server.ops.logs import item_fields
from server.ops.metrics import Metrics

log = logging.getLogger("igsync.webhook")

OWNER_TO_CUSTOMER = "owner_to_customer"
CUSTOMER_TO_OWNER = "customer_to_owner"
SOURCE_CUSTOMER = "instagram"
SOURCE_INSTAGRAM_APP = "instagram_direct"


@dataclass
class WebhookResponse:
    status: int
    body: dict[str, Any]
    outcome: str


class OwnerMessageStore(Protocol):
    """How an owner (echo) message is stored: the echo dedup of :mod:`server.dedup.echo`."""

    async def store_owner_message(self, message: dict[str, Any], *, received_at: float) -> tuple[Recorded, str | None]:
        """Store it or recognise it; returns (recorded, duplicate layer or None)."""
        ...


class EventItemHandler(Protocol):
    """Non-message items (reactions, reads, edits, unsends): see :mod:`server.ingest.changes`."""

    async def handle(self, item: wp.WebhookItem, channel: dict[str, Any], *, received_at: float) -> dict[str, Any]:
        """Handle one non-message item (reaction, read, edit, unsend) of a channel."""
        ...


class NewCustomerHook(Protocol):
    """Told when a customer is created, and of every message a known customer sends (both
    called on the webhook's path: they must return at once)."""

    def new_customer(self, channel: dict[str, Any], customer: dict[str, Any]) -> None:
        """A customer was just created: look up their profile."""
        ...

    def returning_customer(self, channel: dict[str, Any], customer_id: ObjectId) -> None:
        """A known customer wrote again: refresh their profile if it is old."""
        ...


class WebhookActivity(Protocol):
    """Told of every item for a connected channel (``server.ops_monitor.ChannelActivity``)."""

    async def seen(self, channel_id: ObjectId, received_at: float) -> None:
        """A webhook item came for a channel."""
        ...


class InFlight:
    """How many webhook requests this process is handling now.

    Shared with the trigger dispatcher, which gives way to webhooks (``busy``): created before
    both, so neither needs the other to exist first."""

    def __init__(self) -> None:
        self.count = 0

    def busy(self) -> bool:
        """True while at least one webhook is being handled."""
        return self.count > 0


class IngestPipeline:
    def __init__(
        self,
        *,
        store: Store,
        app_secret: str,
        channels: ChannelCache,
        threads: ThreadResolver,
        recorder: MessageRecorder,
        metrics: Metrics,
        audit: AuditTrail,
        owner_messages: OwnerMessageStore | None = None,
        item_events: EventItemHandler | None = None,
        new_customer_hooks: list[NewCustomerHook] | None = None,
        activity: WebhookActivity | None = None,
        load: InFlight | None = None,
        recent: RecentlyStored | None = None,
    ) -> None:
        self.store = store
        self.app_secret = app_secret
        self.channels = channels
        self.threads = threads
        self.recorder = recorder
        self.metrics = metrics
        self.audit = audit
        self.owner_messages = owner_messages
        self.item_events = item_events
        self.new_customer_hooks = list(new_customer_hooks or [])
        self.activity = activity
        # Webhook POSTs being processed right now: background work (trigger delivery) gives
        # way while this is above zero, so that it never slows the webhook down.
        self.load = load if load is not None else InFlight()
        self.recent = recent if recent is not None else RecentlyStored()

    # -- the request -------------------------------------------------------------------

    async def handle_post(
        self, body: bytes, signature: str | None, *, received_at: float | None = None
    ) -> WebhookResponse:
        """Verify over the raw bytes, then process; never raises for bad input."""
        started = time.perf_counter()
        self.load.count += 1
        try:
            if not signature_ok(body, signature, self.app_secret):
                response = WebhookResponse(
                    401, _error("invalid_signature", "Missing or wrong X-Hub-Signature-256."), "invalid_signature"
                )
            else:
                response = await self.process_body(body, received_at=received_at)
        finally:
            self.load.count -= 1
        self.metrics.webhook_requests.labels(outcome=response.outcome).inc()
        self.metrics.webhook_duration.observe(time.perf_counter() - started)
        return response

    async def process_body(
        self, body: bytes, *, received_at: float | None = None, audit: bool = True
    ) -> WebhookResponse:
        """A verified body: parse, process every item in order, audit. ``igsync replay`` calls
        this directly (its bodies were verified when they arrived) with ``audit=False``."""
        received_at = received_at if received_at is not None else time.time()
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError:
            return WebhookResponse(400, _error("invalid_json", "The body is not JSON."), "bad_request")
        try:
            items = wp.parse_body(payload)
        except wp.PayloadError as exc:
            return WebhookResponse(400, _error("invalid_payload", str(exc)), "bad_request")
        try:
            return await self.process_items(body, items, received_at=received_at, audit=audit)
        except Exception:
            log.exception("webhook failed unexpectedly")
            return WebhookResponse(500, _error("internal_error", "The webhook could not be processed."), "error")

    async def process_items(
        self, body: bytes, items: list[wp.WebhookItem], *, received_at: float, audit: bool = True
    ) -> WebhookResponse:
        """Store every item of a verified body; per-item results, or the store's failure."""
        results: list[dict[str, Any]] = []
        failure: PyMongoError | None = None
        try:
            # In order: an echo and the customer message it answers may share one body.
            for item in items:
                results.append(await self._process_isolated(item, received_at=received_at))
        except PyMongoError as exc:
            failure = exc
            self.metrics.store_errors.labels(store="mongo").inc()
            log.error(
                "MongoDB failed while processing a webhook (%s); answering 503 for redelivery",
                type(exc).__name__,
                extra={"event": "store_error", "outcome": "store_error"},
            )
        # After a store that did not answer, its audit write would only wait out the same
        # timeout again; the 503 makes Meta redeliver the body, and the copy comes with it.
        if audit and (failure is None or not store_unavailable(failure)):
            self._audit(body, items, results, received_at, failure)
        if failure is not None:
            return WebhookResponse(
                503, _error("store_unavailable", "The message store is unavailable; retry later."), "store_error"
            )
        if len(items) == 1:
            return WebhookResponse(200, results[0], "processed")
        return WebhookResponse(200, {"status": "success", "results": results}, "processed")

    def _audit(
        self,
        body: bytes,
        items: list[wp.WebhookItem],
        results: list[dict[str, Any]],
        received_at: float,
        failure: Exception | None,
    ) -> None:
        """Queue the body's audit copy (written after the answer, :mod:`server.ingest.audit`)."""
        account_ids = sorted({i.entry_id for i in items if i.entry_id})
        summary = [_audit_summary(r) for r in results]
        if failure is not None:
            summary.append({"status": "store_error", "error": type(failure).__name__})
        received = from_epoch_ms(received_at * 1000)
        self.audit.add(self.store.webhook_events.build(body, account_ids, received, summary))

    # -- one item ----------------------------------------------------------------------

    async def _process_isolated(self, item: wp.WebhookItem, *, received_at: float) -> dict[str, Any]:
        """One item; a document the store refuses fails this item alone (``invalid_item``, the
        request stays 200): its redelivery would be refused again, forever, and hold back the
        items around it. A store that is unavailable still fails the request (503)."""
        try:
            return await self.process_item(item, received_at=received_at)
        except Exception as exc:
            if not document_refused(exc):
                raise
            item.error = f"the item cannot be stored ({type(exc).__name__})"
            log.error("webhook item refused by the store: mid=%s (%s)", item.mid, type(exc).__name__)
            return self._invalid(item, time.perf_counter())

    async def process_item(self, item: wp.WebhookItem, *, received_at: float) -> dict[str, Any]:
        """One item → its response object; logs exactly one ``webhook_item`` line for it."""
        started = time.perf_counter()
        if item.kind == wp.KIND_INVALID:
            return self._invalid(item, started)
        if item.kind == wp.KIND_TEST:
            self.metrics.webhook_events.labels(kind="test", direction="none").inc()
            log.info(
                "webhook item: dashboard test payload acknowledged (entry=%s)",
                item.entry_id,
                extra=item_fields(kind="test", outcome="acknowledged", started=started),
            )
            return {"status": "success", "event": "test", "message": "Test webhook received."}
        channel = await self.channels.lookup(item.entry_id)
        if channel is None:
            self.metrics.webhook_events.labels(kind="ignored", direction="none").inc()
            log.info(
                "webhook item ignored: unknown_channel entry=%s kind=%s",
                item.entry_id,
                item.kind,
                extra=item_fields(kind=item.kind, outcome="ignored", reason="unknown_channel", started=started),
            )
            return {"status": "ignored", "reason": "unknown_channel"}
        if self.activity is not None:
            await self.activity.seen(channel["_id"], received_at)
        if item.kind == wp.KIND_MESSAGE:
            return await self._message(item, channel, received_at, started)
        direction = self._direction(item, channel)
        self.metrics.webhook_events.labels(kind=item.kind, direction=direction).inc()
        if self.item_events is None:
            result: dict[str, Any] = {"status": "success", "event": item.kind, "message_id": None, "changes": []}
        else:
            result = await self.item_events.handle(item, channel, received_at=received_at)
        message_id = result.get("message_id")
        kind = str(result.get("event") or item.kind)  # "unreact" is a reaction item
        log.info(
            "webhook item: %s direction=%s channel=%s on mid=%s message=%s changes=%s%s",
            kind,
            direction,
            channel["_id"],
            item.target_mid,
            message_id,
            ",".join(result.get("changes") or []) or "-",
            "" if message_id else " (the message is not stored (yet): kept to apply when it arrives)",
            extra=item_fields(
                kind=kind,
                # orphan: the message it is about is not stored (yet); the event is kept for it.
                outcome="applied" if message_id else "orphan",
                started=started,
                direction=direction,
                channel_id=channel["_id"],
                mid=item.target_mid,
                message_id=message_id,
            ),
        )
        return result

    def _invalid(self, item: wp.WebhookItem, started: float) -> dict[str, Any]:
        self.metrics.webhook_events.labels(kind="invalid", direction="none").inc()
        log.warning(
            "webhook item skipped: invalid_item entry=%s reason=%s",
            item.entry_id,
            item.error,
            extra=item_fields(kind=item.kind, outcome="invalid", reason="invalid_item", mid=item.mid, started=started),
        )
        return {"status": "error", "error": "invalid_item", "message": item.error or "The item cannot be processed."}

    @staticmethod
    def _direction(item: wp.WebhookItem, channel: dict[str, Any]) -> str:
        if item.is_echo or item.sender_id in channel_account_ids(channel):
            return OWNER_TO_CUSTOMER
        return CUSTOMER_TO_OWNER

    async def _message(
        self, item: wp.WebhookItem, channel: dict[str, Any], received_at: float, started: float
    ) -> dict[str, Any]:
        direction = self._direction(item, channel)
        customer_ig = item.recipient_id if direction == OWNER_TO_CUSTOMER else item.sender_id
        if customer_ig in channel_account_ids(channel):
            item.error = "the business cannot be its own customer (sender and recipient are the account)"
            return self._invalid(item, started)
        self.metrics.webhook_events.labels(kind="message", direction=direction).inc()
        known = self.recent.lookup(channel["_id"], item.mid) if item.mid else None
        if known is not None:
            # A redelivery of a message this process finished: nothing to write or repair.
            return self._duplicate(item, channel, direction, "mid", known, started)
        thread = await self.threads.resolve(channel["_id"], customer_ig)
        if thread.customer_created and thread.customer is not None:
            for hook in self.new_customer_hooks:
                hook.new_customer(channel, thread.customer)
        elif direction == CUSTOMER_TO_OWNER:
            for hook in self.new_customer_hooks:
                hook.returning_customer(channel, thread.customer_id)
        doc = build_message(item, channel["_id"], thread, direction)
        layer: str | None = None
        if direction == OWNER_TO_CUSTOMER and self.owner_messages is not None:
            recorded, layer = await self.owner_messages.store_owner_message(doc, received_at=received_at)
        else:
            recorded = await self.recorder.record(doc, received_at=received_at)
            layer = "mid" if recorded.duplicate else None
        if layer is not None:
            stored_as = (thread.conversation_id, recorded.message.get("_id"))
            return self._duplicate(item, channel, direction, layer, stored_as, started)
        message = recorded.message
        conversation = recorded.conversation or {}
        log.info(
            "webhook item: stored direction=%s type=%s message_type=%s channel=%s conversation=%s mid=%s",
            direction,
            message["type"],
            message["message_type"],
            channel["_id"],
            message["conversation_id"],
            item.mid,
            extra=item_fields(
                kind="message",
                outcome="stored",
                started=started,
                direction=direction,
                channel_id=channel["_id"],
                conversation_id=message["conversation_id"],
                mid=item.mid,
                message_id=message["_id"],
            ),
        )
        if recorded.settled and item.mid:
            self.recent.remember(channel["_id"], item.mid, message["conversation_id"], message["_id"])
        return success_response(direction, channel, thread, conversation, message)

    def _duplicate(
        self,
        item: wp.WebhookItem,
        channel: dict[str, Any],
        direction: str,
        layer: str,
        stored_as: tuple[Any, Any],
        started: float,
    ) -> dict[str, Any]:
        """The answer to a message already stored; ``stored_as``: (conversation id, message id)."""
        conversation_id, message_id = stored_as
        self.metrics.duplicates.labels(layer=layer).inc()
        log.info(
            "webhook item: duplicate detected via %s direction=%s channel=%s conversation=%s mid=%s",
            layer.upper(),
            direction,
            channel["_id"],
            conversation_id,
            item.mid,
            extra=item_fields(
                kind="message",
                outcome="duplicate",
                started=started,
                direction=direction,
                dedup_layer=layer,
                channel_id=channel["_id"],
                conversation_id=conversation_id,
                mid=item.mid,
                message_id=message_id,
            ),
        )
        return {"status": "success", "duplicate": True, "layer": layer}


def build_message(item: wp.WebhookItem, channel_id: ObjectId, thread: Thread, direction: str) -> dict[str, Any]:
    """The stored document of a message item (API.md WSMessage plus internal fields)."""
    inbound = direction == CUSTOMER_TO_OWNER
    now = utcnow()
    return {
        "_id": ObjectId(),
        "channel_id": channel_id,
        "conversation_id": thread.conversation_id,
        "customer_id": thread.customer_id,
        "mid": item.mid,
        "mids": [item.mid] if item.mid else [],
        "content": item.content,
        "content_hash": content_hash(item.content),
        "type": TYPE_CUSTOMER if inbound else TYPE_SUPPORT,
        "source": SOURCE_CUSTOMER if inbound else SOURCE_INSTAGRAM_APP,
        "message_type": item.message_type,
        "media_url": item.media_url,
        "media_file": None,
        "processing_status": "pending" if item.has_media else "completed",
        "transcription": None,
        "is_ai_response": False,
        "is_answered": not inbound,
        "feedback": None,
        "feedback_comment": None,
        "feedback_at": None,
        "sent_at": item.timestamp,
        "created_at": now,
        "reply_to": item.reply_to,
        "attachments": item.attachments,
        "reactions": [],
        "is_deleted": False,
        "edited_at": None,
        "read_at": None,
        "quick_reply": item.quick_reply,
        "postback": item.postback,
        "referral": item.referral,
        "app_id": item.app_id,
    }


def content_hash(content: str) -> str:
    """The MD5 of a message text: how sends and echoes of one text are paired."""
    return hashlib.md5(content.encode("utf-8")).hexdigest()


def success_response(
    direction: str, channel: dict[str, Any], thread: Thread, conversation: dict[str, Any], message: dict[str, Any]
) -> dict[str, Any]:
    """The seed's one-item response (API.md §1)."""
    snapshot = conversation.get("customer") or {}
    return {
        "status": "success",
        "message": "Message received and processed successfully",
        "data": {
            "message_direction": direction,
            "channel": {"username": channel.get("username"), "owner": channel.get("owner")},
            "customer": {
                "id": str(thread.customer_id),
                "instagram_id": snapshot.get("instagram_id"),
                "first_name": snapshot.get("first_name"),
                "last_name": snapshot.get("last_name"),
                "source": "instagram",
                "was_created": thread.customer_created,
                "enhanced_data_fetched": bool(snapshot.get("enhanced_data_fetched")),
            },
            "conversation": {
                "id": str(thread.conversation_id),
                "source": "instagram",
                "was_created": thread.conversation_created,
            },
            "message": {
                "id": str(message["_id"]),
                "content": message["content"],
                "type": message["type"],
                "message_type": message["message_type"],
                "timestamp": iso(message["sent_at"]),
            },
        },
    }


def _error(code: str, message: str) -> dict[str, Any]:
    return {"error": code, "message": message}


def _audit_summary(result: dict[str, Any]) -> dict[str, Any]:
    out = {k: result[k] for k in ("status", "duplicate", "layer", "event", "reason", "error") if k in result}
    data = result.get("data")
    if isinstance(data, dict) and isinstance(data.get("message"), dict):
        out["message_id"] = data["message"].get("id")
    return out
