"""What a trigger receiver gets, and when it is tried again: pure functions.

The payload (:func:`trigger_payload`), its headers and signature (:func:`signature_header`,
the same HMAC-SHA256 formula as Meta's webhooks, :mod:`server.api.signatures`), and the retry
policy (:func:`retry_delay` with jitter, :func:`parse_retry_after`). docs/triggers.md is the
receiver's side of it.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import random
from typing import Any

from models import serializers
from models.timeutil import UTC
from server.api.signatures import sign

EVENT_CUSTOMER_MESSAGE = "customer_message"
SIGNATURE_HEADER = "X-Igsync-Signature-256"
DELIVERY_HEADER = "X-Igsync-Delivery"
ATTEMPT_HEADER = "X-Igsync-Attempt"
EVENT_HEADER = "X-Igsync-Event"
# Each wait is the exponential step times a random factor in [1 - JITTER, 1 + JITTER], so
# that the retries of many jobs that failed together (a receiver outage) spread out.
JITTER = 0.2


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
    return sign(body, secret)


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
