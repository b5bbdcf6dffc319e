"""The synchronous igsync client, on ``requests``: mark-sent with a timeout, retries and typed errors.

Retrying is safe because every call carries a ``client_message_id``: igsync answers a repeat
with the message it already recorded (``200``), never a second one. When the caller gives
none, the client makes one per call, so its own retries are idempotent; give your own
(e.g. your database row id) to make retries across restarts of your process idempotent too.
"""

from __future__ import annotations

import random
import time
import uuid
from dataclasses import dataclass
from typing import Any

import requests

from igsync_client.errors import (
    IgsyncAuthError,
    IgsyncConnectionError,
    IgsyncError,
    IgsyncNotFound,
    IgsyncServerError,
    IgsyncValidationError,
)

MARK_SENT_PATH = "/api/v1/messages/mark-sent"
MESSAGE_TYPES_SENT = ("AI", "support")


@dataclass(frozen=True)
class SendResult:
    """A message igsync stored to send (API.md §2b); Instagram gets it right after, from igsync."""

    message: dict[str, Any]
    created: bool  # 202: stored now (False: an earlier call with this client_message_id stored it)
    status_code: int

    @property
    def id(self) -> str:
        """The stored message's id."""
        return self.message["id"]

    @property
    def delivery_status(self) -> str:
        """``pending`` (igsync is sending it), ``sent`` or ``failed`` — as of the answer."""
        return self.message.get("delivery_status") or "pending"


@dataclass(frozen=True)
class MarkSentResult:
    """What igsync recorded: the message (API.md WSMessage), and how."""

    message: dict[str, Any]
    adopted: bool  # the echo had arrived first; its message became this one
    created: bool  # 201: recorded now (False: an earlier call or the echo had recorded it)
    status_code: int

    @property
    def id(self) -> str:
        """The stored message's id."""
        return self.message["id"]


class IgsyncClient:
    """A client for one igsync deployment. Thread-safe for concurrent calls (one pooled session).

    ``timeout`` is seconds per attempt (a float, or ``(connect, read)``); ``retries`` is how many
    times a connection error, timeout, 429 or 5xx is retried, with exponential backoff and jitter.
    """

    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        timeout: float | tuple[float, float] = 5.0,
        retries: int = 3,
        backoff_secs: float = 0.25,
        max_backoff_secs: float = 4.0,
        session: requests.Session | None = None,
    ) -> None:
        if not token:
            raise ValueError("token is required (one of igsync's IGSYNC_INTERNAL_TOKENS)")
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.retries = max(0, retries)
        self.backoff_secs = backoff_secs
        self.max_backoff_secs = max_backoff_secs
        self.session = session or requests.Session()
        self._headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}

    def __enter__(self) -> IgsyncClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the HTTP session."""
        self.session.close()

    def __repr__(self) -> str:  # never shows the token
        return f"IgsyncClient({self.base_url!r})"

    def mark_sent(
        self,
        content: str = "",
        *,
        type: str = "AI",
        conversation_id: str | None = None,
        account_id: str | None = None,
        customer_instagram_id: str | None = None,
        message_type: str = "text",
        mids: list[str] | None = None,
        client_message_id: str | None = None,
        media_url: str | None = None,
    ) -> MarkSentResult:
        """Report a message sent to a customer through Instagram's Send API (API.md §2).

        Name the conversation by ``conversation_id``, or by ``account_id`` (the channel's page
        or Instagram user id) and ``customer_instagram_id``. ``mids`` are the Send API
        ``message_id``\\s when known: they make the echo match exact.
        """
        if type not in MESSAGE_TYPES_SENT:
            raise ValueError(f"type must be one of {MESSAGE_TYPES_SENT}, got {type!r}")
        body: dict[str, Any] = {
            "content": content,
            "type": type,
            "message_type": message_type,
            "mids": list(mids or []),
            "client_message_id": client_message_id or f"igsync-client-{uuid.uuid4().hex}",
        }
        if conversation_id is not None:
            body["conversation_id"] = conversation_id
        elif account_id is not None and customer_instagram_id is not None:
            body["account_id"] = account_id
            body["customer_instagram_id"] = customer_instagram_id
        else:
            raise ValueError("give conversation_id, or account_id and customer_instagram_id")
        if media_url is not None:
            body["media_url"] = media_url
        response = self._post(MARK_SENT_PATH, body)
        payload = response.json()
        return MarkSentResult(
            message=payload["message"],
            adopted=bool(payload.get("adopted")),
            created=response.status_code == 201,
            status_code=response.status_code,
        )

    def send(
        self,
        conversation_id: str,
        content: str = "",
        *,
        type: str = "AI",
        attachments: list[dict[str, str]] | None = None,
        reply_to: str | None = None,
        client_message_id: str | None = None,
    ) -> SendResult:
        """Send a message to the customer of a conversation through igsync (API.md §2b).

        igsync stores it (``delivery_status: "pending"``) and answers at once; it then calls
        Instagram itself, retries Meta's transient errors, and tells the inbox ``sent`` or
        ``failed``. ``attachments``: ``[{"type": "image"|"video"|"audio"|"file", "url": …}]``.
        A 422 ``outside_messaging_window`` (an AI reply more than 24 h after the customer's
        last message) raises :class:`IgsyncValidationError` with ``code`` saying so.
        """
        if type not in MESSAGE_TYPES_SENT:
            raise ValueError(f"type must be one of {MESSAGE_TYPES_SENT}, got {type!r}")
        body: dict[str, Any] = {
            "content": content,
            "type": type,
            "attachments": list(attachments or []),
            "client_message_id": client_message_id or f"igsync-client-{uuid.uuid4().hex}",
        }
        if reply_to is not None:
            body["reply_to"] = reply_to
        response = self._post(f"/api/v1/conversations/{conversation_id}/messages", body)
        return SendResult(
            message=response.json()["message"], created=response.status_code == 202, status_code=response.status_code
        )

    # -- transport -----------------------------------------------------------------------

    def _post(self, path: str, body: dict[str, Any]) -> requests.Response:
        url = self.base_url + path
        last: IgsyncError | None = None
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self._backoff(attempt))
            try:
                response = self.session.post(url, json=body, headers=self._headers, timeout=self.timeout)
            except (requests.ConnectionError, requests.Timeout) as exc:
                last = IgsyncConnectionError(f"igsync did not answer at {self.base_url}: {type(exc).__name__}")
                continue
            if response.status_code < 400:
                return response
            error = _error_of(response)
            if response.status_code >= 500 or response.status_code == 429:
                last = error
                continue
            raise error
        assert last is not None
        raise last

    def _backoff(self, attempt: int) -> float:
        ceiling = min(self.max_backoff_secs, self.backoff_secs * 2 ** (attempt - 1))
        return ceiling / 2 + random.uniform(0, ceiling / 2)


def _error_of(response: requests.Response) -> IgsyncError:
    try:
        payload = response.json()
    except ValueError:
        payload = {}
    if not isinstance(payload, dict):
        payload = {}
    status = response.status_code
    message = str(payload.get("message") or f"igsync answered HTTP {status}")
    kwargs: dict[str, Any] = {"status": status, "code": payload.get("error"), "fields": payload.get("fields")}
    if status in (401, 403):
        return IgsyncAuthError(message, **kwargs)
    if status == 404:
        return IgsyncNotFound(message, **kwargs)
    if status in (400, 413, 422):
        return IgsyncValidationError(message, **kwargs)
    if status >= 500 or status == 429:
        return IgsyncServerError(message, **kwargs)
    return IgsyncError(message, **kwargs)
