"""Workflow triggers: which customer messages are handed to the AI service and other workers,
what they receive, and the admin operations on deliveries that failed for good.

This module owns the *rules* and the *outbox side*:

* :class:`TriggerOutbox` — a :class:`~server.ingest.recorder.BeforeStoreHook`. A customer message
  is stored *with* its trigger mark (``trigger_pending`` and the channel's targets at that
  moment): one write, so the message never exists without it, a failure is the message's own
  503, and the webhook pays no extra round trip. The dispatcher turns marks into
  ``trigger_jobs`` (one per message and target) off the hot path. Echoes and outbound
  messages are never marked; neither are messages of a channel with ``ai_enabled: false``
  (their history is stored as always).
* the payload (:func:`trigger_payload`), its signature (:func:`signature_header`) and the
  retry policy (:func:`retry_delay`, :func:`parse_retry_after`) — pure functions;
* :class:`TriggerAdmin` — dead letters for ``GET /api/v1/triggers/dead`` and
  ``igsync triggers list-dead|retry``.

Delivery itself (the dispatcher service, HTTP and Redis Stream) is :mod:`server.triggers.delivery`.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import hashlib
import hmac
import random
import time
from collections.abc import Callable
from typing import Any

from bson import ObjectId

from models import serializers
from models.ids import Picked, pick_in_state
from models.messages import TYPE_CUSTOMER
from models.store import Store
from models.timeutil import UTC, iso
from models.trigger_jobs import STATE_DEAD, TARGET_HTTP, TARGET_REDIS_STREAM, mark_for_triggers
from server.api.errors import not_found
from server.inbox.service import decode_cursor, encode_cursor, parse_limit

EVENT_CUSTOMER_MESSAGE = "customer_message"
SIGNATURE_HEADER = "X-Igsync-Signature-256"
DELIVERY_HEADER = "X-Igsync-Delivery"
ATTEMPT_HEADER = "X-Igsync-Attempt"
EVENT_HEADER = "X-Igsync-Event"
# Each wait is the exponential step times a random factor in [1 - JITTER, 1 + JITTER], so
# that the retries of many jobs that failed together (a receiver outage) spread out.
JITTER = 0.2


# -- which messages, which targets ------------------------------------------------------


def channel_targets(channel: dict[str, Any] | None) -> list[str]:
    """The targets a channel's customer messages go to now; empty when triggers are off."""
    if not channel or not channel.get("is_connect", False) or not channel.get("ai_enabled", True):
        return []
    triggers = channel.get("triggers") or {}
    targets = []
    if triggers.get("http"):
        targets.append(TARGET_HTTP)
    if triggers.get("redis_stream"):
        targets.append(TARGET_REDIS_STREAM)
    return targets


class TriggerOutbox:
    """Marks customer messages for their triggers as they are stored (a before-store hook)."""

    def __init__(
        self, store: Store, *, channel_cache_secs: float, on_recorded: Callable[[], None] | None = None
    ) -> None:
        self.store = store
        self.channel_cache_secs = channel_cache_secs
        self.on_recorded = on_recorded
        # channel id → (expires at, channel): the trigger settings are read on every customer
        # message, so a change made elsewhere takes effect within channel_cache_secs.
        self._channels: dict[ObjectId, tuple[float, dict[str, Any] | None]] = {}

    async def before_message_stored(self, message: dict[str, Any]) -> None:
        if message.get("type") != TYPE_CUSTOMER:
            return
        targets = channel_targets(await self._channel(message["channel_id"]))
        if not targets:
            return
        mark_for_triggers(message, targets)
        if self.on_recorded is not None:
            self.on_recorded()

    async def _channel(self, channel_id: ObjectId) -> dict[str, Any] | None:
        now = time.monotonic()
        hit = self._channels.get(channel_id)
        if hit is not None and hit[0] > now:
            return hit[1]
        channel = await self.store.channels.get(channel_id)
        if self.channel_cache_secs > 0:
            self._channels[channel_id] = (now + self.channel_cache_secs, channel)
        return channel


# -- what a receiver gets ---------------------------------------------------------------


def trigger_payload(
    delivery_id: str, channel: dict[str, Any], conversation: dict[str, Any], message: dict[str, Any]
) -> dict[str, Any]:
    """The body of a trigger (API.md §3b), from the stored documents as they are now."""
    return {
        "event": EVENT_CUSTOMER_MESSAGE,
        "delivery_id": delivery_id,
        "channel": serializers.channel(channel),
        "conversation": serializers.conversation(conversation),
        "customer": serializers.customer(conversation.get("customer") or {"id": conversation.get("customer_id")}),
        "message": serializers.ws_message(message),
    }


def signature_header(body: bytes, secret: str) -> str:
    """``sha256=<hex HMAC-SHA256 of the raw body>`` — what ``verify_trigger_signature`` checks."""
    return "sha256=" + hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


# -- when to try again ------------------------------------------------------------------


def retry_delay(
    attempts: int,
    *,
    base_secs: float,
    max_secs: float,
    retry_after_secs: float | None = None,
    rng: random.Random | None = None,
) -> float:
    """Seconds to wait after the ``attempts``-th failed attempt.

    ``base · 2^(attempts-1)`` with ±20 % jitter, at most ``max_secs``; never earlier than the
    receiver's ``Retry-After`` (itself capped at ``max_secs``, so a receiver cannot park a job
    for days). With the defaults (30 s, 8 attempts) the seven waits add up to about an hour.
    """
    step = min(max_secs, base_secs * 2 ** max(0, attempts - 1))
    delay = min(max_secs, step * (rng or random).uniform(1 - JITTER, 1 + JITTER))
    if retry_after_secs is not None:
        delay = max(delay, min(retry_after_secs, max_secs))
    return delay


def parse_retry_after(value: str | None, now: dt.datetime) -> float | None:
    """``Retry-After`` as seconds from ``now``: delta-seconds or an HTTP date; None if absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - now).total_seconds())


# -- dead letters -----------------------------------------------------------------------


def dead_delivery(job: dict[str, Any]) -> dict[str, Any]:
    """A dead-lettered job as the API and the CLI show it."""
    error = job.get("last_error") or {}
    return {
        "delivery_id": str(job["_id"]),
        "target": job["target"],
        "channel_id": str(job["channel_id"]),
        "conversation_id": str(job["conversation_id"]),
        "message_id": str(job["message_id"]),
        "attempts": int(job.get("attempts") or 0),
        "retries": int(job.get("retries") or 0),
        "last_error": {
            "result": error.get("result"),
            "status": error.get("status"),
            "detail": error.get("detail"),
            "at": iso(error.get("at")),
        },
        "created_at": iso(job.get("created_at")),
        "dead_at": iso(job.get("dead_at")),
    }


class TriggerAdmin:
    """Dead letters: list them (admin API, CLI) and put them back in their lane (CLI)."""

    def __init__(self, store: Store, *, on_requeued: Callable[[], None] | None = None) -> None:
        self.store = store
        self.on_requeued = on_requeued

    async def _channel_filter(self, channel_id: str | None) -> ObjectId | None:
        if not channel_id:
            return None
        channel = await self.store.channels.get(channel_id)
        if channel is None:
            raise not_found("channel")
        return channel["_id"]

    async def list_dead(
        self, *, limit: str | None = None, cursor: str | None = None, channel_id: str | None = None
    ) -> dict[str, Any]:
        page_size = parse_limit(limit)
        channel_oid = await self._channel_filter(channel_id)
        before = decode_cursor(cursor) if cursor else None
        jobs = await self.store.trigger_jobs.dead_page(limit=page_size + 1, channel_id=channel_oid, before=before)
        next_cursor = None
        if len(jobs) > page_size:
            jobs = jobs[:page_size]
            next_cursor = encode_cursor(jobs[-1]["dead_at"], jobs[-1]["_id"])
        return {"deliveries": [dead_delivery(j) for j in jobs], "next_cursor": next_cursor}

    async def retry(self, delivery_ids: list[str] | None, *, channel_id: str | None = None) -> dict[str, Any]:
        """Requeue the named dead jobs (or, with ``None``, every dead job of the channel or of
        all channels): pending again, due now, with a fresh set of attempts."""
        channel_oid = await self._channel_filter(channel_id)
        picked = Picked()
        oids: list[ObjectId] | None = None
        if delivery_ids is not None:
            picked = await pick_in_state(
                delivery_ids,
                self.store.trigger_jobs.get,
                STATE_DEAD,
                visible=lambda job: channel_oid is None or job["channel_id"] == channel_oid,
            )
            oids = picked.ready
        retried = await self.store.trigger_jobs.requeue_dead(oids, channel_id=channel_oid) if oids != [] else 0
        if retried and self.on_requeued is not None:
            self.on_requeued()
        not_dead = [{"delivery_id": raw, "state": state} for raw, state in picked.other_state]
        return {"retried": retried, "not_found": picked.not_found, "not_dead": not_dead}
