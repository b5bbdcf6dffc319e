"""Helpers of the dedup tests: mark-sent calls, echoes, and reading back what was stored."""

from __future__ import annotations

import uuid
from typing import Any

from pymongo import ASCENDING
from tornado.httpclient import HTTPResponse

from tests.support.helpers import ACCOUNT_ID, CUSTOMER_A, INTERNAL_TOKEN, Client, body_of, echo_item, messaging_body

MARK_SENT = "/api/v1/messages/mark-sent"


def new_mid(tag: str = "m") -> str:
    """A fresh Instagram-looking mid (unique per call, so Redis keys never leak between tests)."""
    return f"aWdf{tag}_{uuid.uuid4().hex}"


async def mark_sent(
    client: Client,
    content: str,
    *,
    customer: str = CUSTOMER_A,
    account_id: str = ACCOUNT_ID,
    type: str = "AI",
    token: str | None = INTERNAL_TOKEN,
    **extra: Any,
) -> HTTPResponse:
    body: dict[str, Any] = {"content": content, "type": type, **extra}
    if "conversation_id" not in extra:
        body.update(account_id=account_id, customer_instagram_id=customer)
    return await client.post(MARK_SENT, body, token=token)


async def echo(client: Client, mid: str, text: str, *, customer: str = CUSTOMER_A) -> HTTPResponse:
    """An owner message as Instagram delivers it: the echo of a send, or typed in the app."""
    return await client.webhook(messaging_body(echo_item(mid, text, customer=customer)))


def ok_body(response: HTTPResponse) -> dict[str, Any]:
    assert response.code in (200, 201), (response.code, response.body)
    return body_of(response)


async def conversation_of(db: Any, customer: str = CUSTOMER_A) -> dict[str, Any] | None:
    return await db.conversations.find_one({"customer_instagram_id": customer})


async def stored_messages(db: Any, customer: str = CUSTOMER_A, *, visible_only: bool = True) -> list[dict[str, Any]]:
    """Every message of the customer's conversation, oldest first (read straight from MongoDB)."""
    conversation = await conversation_of(db, customer)
    if conversation is None:
        return []
    query: dict[str, Any] = {"conversation_id": conversation["_id"]}
    if visible_only:
        query["merged_into"] = {"$exists": False}
    return await db.messages.find(query).sort([("sent_at", ASCENDING), ("_id", ASCENDING)]).to_list(None)


def sample(metrics: Any, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0
