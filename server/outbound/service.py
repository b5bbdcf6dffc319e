"""``POST /api/v1/conversations/{id}/messages`` and ``POST /api/v1/messages/{id}/retry`` (API.md §2b).

Owns the request side of sending through igsync: who may send what (an inbox token is a
person, ``support``; an internal token may send as ``AI``), Meta's messaging window
(:mod:`models.messaging_window`), idempotency by ``client_message_id``, and the order that
makes a send impossible to store twice or lose:

1. the send is registered in the pairing document of its text (:mod:`server.dedup.pairing`)
   *before* anything else, so an echo that beats Instagram's answer pairs with it;
2. the message is stored with ``delivery_status: "pending"`` and its parts, and published
   (``chat_message``) — the answer is ``202``;
3. the send worker (:mod:`server.outbound.worker`) calls Instagram and records each part's
   ``mid``; every echo is then a ``mid`` duplicate.

Nothing of Instagram is called in the request: a slow or failing Send API never holds an
inbox's request, and a process that dies after step 2 leaves a pending message that another
worker takes after its lease.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable
from typing import Any

from bson import ObjectId
from pymongo.errors import PyMongoError

from models import serializers
from models.ids import as_object_id
from models.messages import TYPE_AI, TYPE_CUSTOMER, TYPE_SUPPORT
from models.messaging_window import decide
from models.outbound import PENDING
from models.store import Store
from models.timeutil import utcnow
from server.api.auth import INBOX, INTERNAL, Authenticator, Principal, bearer_token
from server.api.errors import ApiError, forbidden, not_found
from server.api.schemas import SEND_INPUT, load
from server.dedup.marksent import SOURCE_AI, SOURCE_APP, MarkSentService, Target, outbound_message
from server.inbox.scope import OwnerScope
from server.ingest.pipeline import content_hash
from server.ops.metrics import Metrics

log = logging.getLogger("igsync.send")


def message_parts(content: str, attachments: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What goes to Instagram, one Send API call each: the text first, then every attachment."""
    parts: list[dict[str, Any]] = []
    if content.strip():
        parts.append({"kind": "text", "text": content, "mid": None, "attempted_at": None})
    for attachment in attachments:
        parts.append({"kind": attachment["type"], "url": attachment["url"], "mid": None, "attempted_at": None})
    return parts


class SendService:
    def __init__(
        self,
        *,
        store: Store,
        auth: Authenticator,
        scope: OwnerScope,
        marksent: MarkSentService,
        metrics: Metrics,
        wake_worker: Callable[[], None],
    ) -> None:
        self.store = store
        self.auth = auth
        self.scope = scope
        self.marksent = marksent
        self.metrics = metrics
        self.wake_worker = wake_worker

    async def principal(self, authorization: str | None) -> Principal:
        """An inbox token (a person) or an internal token (a service): 401/403 otherwise."""
        principal = await self.auth.resolve(bearer_token(authorization))
        if principal is None:
            return Authenticator.check(None, INBOX)  # raises 401
        if principal.kind not in (INBOX, INTERNAL):
            return Authenticator.check(principal, INBOX)  # raises 403
        return principal

    async def send(self, principal: Principal, conversation_id: str, payload: Any) -> tuple[int, dict[str, Any]]:
        """Store a message to send (202), or the one stored under its ``client_message_id`` (200)."""
        data = load(SEND_INPUT, payload)
        sender_type = _sender_type(principal, data.get("type"))
        conversation = await self._conversation(principal, conversation_id)
        try:
            return await self._send(principal, conversation, sender_type, data)
        except PyMongoError as exc:
            self.metrics.store_errors.labels(store="mongo").inc()
            log.error("send: MongoDB failed (%s); answering 503", type(exc).__name__)
            raise ApiError(503, "store_unavailable", "The message store is unavailable; retry later.") from None

    async def _send(
        self, principal: Principal, conversation: dict[str, Any], sender_type: str, data: dict[str, Any]
    ) -> tuple[int, dict[str, Any]]:
        received_at = time.time()
        cmid = data.get("client_message_id")
        if cmid is not None:
            existing = await self.store.messages.find_by_client_message_id(
                conversation["channel_id"], conversation["_id"], cmid
            )
            if existing is not None:
                return 200, {"message": serializers.ws_message(existing)}
        channel = await self.store.channels.get(conversation["channel_id"])
        if channel is None or not channel.get("is_connect") or not channel.get("access_token"):
            # Refused before anything is stored: no worker could ever send it.
            raise ApiError(409, "channel_cannot_send", "The channel is disconnected or has no access token.")
        last_customer_at = conversation.get("last_customer_message_at") or await self._last_customer_at(conversation)
        decision = decide(sender_type, last_customer_at, utcnow())
        if decision.mode is None:
            self.metrics.sends.labels(outcome="outside_window").inc()
            raise ApiError(422, "outside_messaging_window", decision.reason)
        reply_to = await self._reply_to(principal, conversation, data.get("reply_to"))
        target = Target(conversation["channel_id"], conversation["_id"], conversation["customer_id"])
        send_id = f"c:{cmid}" if cmid is not None else f"s:{ObjectId()}"
        # Registered before Instagram can know of it: an echo that beats the Send API's answer
        # pairs with this send instead of being stored as an Instagram-app message.
        await self.marksent.pairing.register_send(conversation["_id"], content_hash(data["content"]), send_id, [])
        recipient = (conversation.get("customer") or {}).get("instagram_id")
        doc = self._document(data, target, send_id, sender_type, decision.mode, reply_to, recipient)
        result = await self.marksent.record_outbound(doc, send_id, received_at)
        if result.status == 201:
            self.metrics.sends.labels(outcome="queued").inc()
            log.info(
                "send: queued conversation=%s message=%s type=%s parts=%d mode=%s",
                conversation["_id"],
                doc["_id"],
                sender_type,
                len(doc["send"]["parts"]),
                decision.mode,
            )
        self.wake_worker()
        return (202 if result.status == 201 else 200), {"message": serializers.ws_message(result.message)}

    def _document(
        self,
        data: dict[str, Any],
        target: Target,
        send_id: str,
        sender_type: str,
        mode: str,
        reply_to: dict[str, Any] | None,
        recipient: str | None,
    ) -> dict[str, Any]:
        attachments = data.get("attachments") or []
        message_type = "text" if data["content"].strip() or not attachments else attachments[0]["type"]
        fields = {
            "content": data["content"],
            "type": sender_type,
            "message_type": message_type,
            "media_url": None,
            "client_message_id": data.get("client_message_id"),
        }
        doc = outbound_message(fields, target, send_id, [], [])
        now = utcnow()
        doc.update(
            {
                "source": SOURCE_AI if sender_type == TYPE_AI else SOURCE_APP,
                "attachments": [{"type": a["type"], "url": a["url"]} for a in attachments],
                "delivery_status": PENDING,
                "delivery_error": None,
                "send_due_at": now,
                "send": {
                    # Who gets it, kept on the send so the worker needs no customer look-up.
                    "recipient": recipient,
                    "parts": message_parts(data["content"], attachments),
                    "mode": mode,
                    "reply_to_mid": (reply_to or {}).get("mid"),
                    "attempts": 0,
                    "claims": 0,
                },
            }
        )
        if reply_to is not None:
            doc["reply_to"] = {"message_id": reply_to["_id"], "mid": reply_to.get("mid")}
        return doc

    async def retry(self, principal: Principal, message_id: str) -> tuple[int, dict[str, Any]]:
        """A failed send back in the queue (202); 409 ``not_failed`` in any other state."""
        message = await self._message(principal, message_id)
        requeued = await self.store.outbound.requeue_failed(message["_id"], message["channel_id"])
        if requeued is None:
            raise ApiError(409, "not_failed", "Only a failed send can be retried.")
        self.metrics.sends.labels(outcome="retried_by_user").inc()
        self.wake_worker()
        return 202, {"message": serializers.ws_message(requeued)}

    # -- look-ups ------------------------------------------------------------------------

    async def _conversation(self, principal: Principal, conversation_id: str) -> dict[str, Any]:
        if principal.kind == INBOX:
            return await self.scope.owned_conversation(principal, conversation_id)
        return await self.scope.conversation(conversation_id)

    async def _message(self, principal: Principal, message_id: str) -> dict[str, Any]:
        oid = as_object_id(message_id)
        message = None if oid is None else await self.store.messages.get(oid)
        if message is None:
            raise not_found("message")
        # The conversation's owner check (404 for another owner's message, as everywhere).
        await self._conversation(principal, str(message["conversation_id"]))
        return message

    async def _last_customer_at(self, conversation: dict[str, Any]) -> dt.datetime | None:
        """For a conversation stored before ``last_customer_message_at`` was kept."""
        last = await self.store.messages.latest_of_type(conversation["channel_id"], conversation["_id"], TYPE_CUSTOMER)
        return None if last is None else last["sent_at"]

    async def _reply_to(
        self, principal: Principal, conversation: dict[str, Any], message_id: str | None
    ) -> dict[str, Any] | None:
        if message_id is None:
            return None
        message = await self.scope.owned_message(principal, conversation, message_id, "reply_to")
        if not message.get("mid"):
            raise ApiError(409, "not_sent_yet", "The message replied to has not reached Instagram yet.")
        return message


def _sender_type(principal: Principal, requested: str | None) -> str:
    if principal.kind == INBOX:
        if requested not in (None, TYPE_SUPPORT):
            # The token's kind decides who may send as AI: the same answer as any other
            # operation a token of this kind may not do.
            raise forbidden("An inbox token sends as a person (type support); AI replies need an internal token.")
        return TYPE_SUPPORT
    return requested or TYPE_SUPPORT
