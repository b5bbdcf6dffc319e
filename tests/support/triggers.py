"""Support for the trigger tests: a real receiver, fast settings, channel and message helpers.

The receiver is a Tornado HTTP server on a loopback port.

Every request is recorded (raw body, headers, the answer given). What it answers is decided
per request by a *behaviour* — a coroutine of (payload, attempt) returning (status, headers)
— so a test can make it answer 200, 500, 429 with Retry-After, hang past the timeout, or
be down (not listening at all: :meth:`TriggerReceiver.stop`, then start again on the same port).
It also measures how many deliveries of one conversation are in flight at once.
"""

from __future__ import annotations

import time
from typing import Any

from tests.fakes.receiver import TRIGGER_SECRET
from tests.support.helpers import ACCOUNT_ID, ADMIN_TOKEN, CUSTOMER_A, body_of, messaging_body, text_item

# -- igsync side -------------------------------------------------------------------------

# Fast retry and lease timings so that the tests observe whole retry schedules in seconds.
FAST_TRIGGERS = {
    "trigger_retry_base_secs": 0.05,
    "trigger_retry_max_secs": 2.0,
    "trigger_poll_secs": 0.1,
    "trigger_lease_margin_secs": 2.0,
}


def http_triggers(url: str, *, secret: str = TRIGGER_SECRET, **extra: Any) -> dict[str, Any]:
    return {"http": {"url": url, "secret": secret, **extra}, "redis_stream": False}


async def connect_with_triggers(
    client: Any,
    triggers: dict[str, Any] | None,
    *,
    ai_enabled: bool | None = None,
    page_id: str = ACCOUNT_ID,
    username: str = "shop",
) -> dict[str, Any]:
    """Connect (or re-post) the fixtures' channel with these triggers; the Channel answered."""
    body: dict[str, Any] = {
        "page_id": page_id,
        "username": username,
        "owner": {"id": 1, "email": "owner@example.com"},
        "triggers": triggers,
    }
    if ai_enabled is not None:
        body["ai_enabled"] = ai_enabled
    response = await client.post("/api/v1/channels", body, token=ADMIN_TOKEN)
    assert response.code in (200, 201), response.body
    return body_of(response)["channel"]


class MessageSender:
    """Customer messages with rising Instagram timestamps and unique mids."""

    def __init__(self, client: Any, prefix: str = "m") -> None:
        self.client = client
        self.prefix = prefix
        self.n = 0
        self.base_ms = int(time.time() * 1000)

    async def send(self, text: str, *, customer: str = CUSTOMER_A) -> dict[str, Any]:
        self.n += 1
        item = text_item(f"{self.prefix}-{self.n}", text, sender=customer, timestamp_ms=self.base_ms + self.n)
        response = await self.client.webhook(messaging_body(item))
        assert response.code == 200, response.body
        return body_of(response)
