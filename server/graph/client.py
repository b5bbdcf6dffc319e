"""The Instagram Graph API client, with Tornado's AsyncHTTPClient: customer profile look-ups
and fresh links for a message's attachments (the webhook's links expire).

Owns the HTTP call and the translation of Meta's answers into one exception type,
:class:`GraphApiError`, whose ``category`` the callers act on (see
:func:`classify`). The access token travels as the ``access_token`` query parameter, as
Meta documents it; therefore no URL of this module is ever logged, and no exception
raised here carries the URL or the token — only codes and Meta's message with the token
masked.
"""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass
from typing import Any

import orjson
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

PROFILE_FIELDS = "name,username,profile_pic"
MESSAGE_ATTACHMENT_FIELDS = "attachments"

# What to do about an error (Meta's codes, as Chatwoot learned them).
TOKEN_EXPIRED = "token_expired"  # 190: the channel needs re-authorisation; stop asking
UNAVAILABLE = "unavailable"  # 230 no consent, 9010 no such user, 100 not reachable: placeholder, never retry
TRANSIENT = "transient"  # timeouts, 5xx, rate limits: worth another try later
FAILED = "failed"  # anything else: give up quietly

UNAVAILABLE_CODES = frozenset({230, 9010, 100})
# 1/2 unknown/service, 4/17/32/613 rate limits, 341 application limit.
TRANSIENT_CODES = frozenset({1, 2, 4, 17, 32, 341, 613})


class GraphApiError(Exception):
    def __init__(
        self,
        category: str,
        *,
        code: int | None = None,
        subcode: int | None = None,
        http_status: int | None = None,
        detail: str = "",
    ) -> None:
        self.category = category
        self.code = code
        self.subcode = subcode
        self.http_status = http_status
        self.detail = detail
        super().__init__(f"graph api {category} (code={code} subcode={subcode} http={http_status}) {detail}".strip())


@dataclass(frozen=True)
class Profile:
    name: str | None
    username: str | None
    profile_pic: str | None

    def names(self) -> tuple[str | None, str | None]:
        """(first_name, last_name): Instagram has one display name; split at the first space.
        Without a name the username is what a person recognises."""
        name = (self.name or "").strip()
        if not name:
            return (self.username, None)
        first, _, last = name.partition(" ")
        return (first, last.strip() or None)


def classify(code: int | None, http_status: int | None) -> str:
    """What a Graph API error means for the caller: token expired, unavailable, or permanent."""
    if code == 190:
        return TOKEN_EXPIRED
    if code in UNAVAILABLE_CODES:
        return UNAVAILABLE
    if code in TRANSIENT_CODES:
        return TRANSIENT
    if code is None and (http_status is None or http_status >= 500 or http_status == 429):
        return TRANSIENT
    return FAILED


def mask(text: str, secret: str | None) -> str:
    """``text`` with ``secret`` replaced, for logs and stored errors."""
    return text.replace(secret, "***") if secret else text


class OutboundHttp:
    """An ``AsyncHTTPClient`` of one's own for calls to Meta (Graph API, CDN): created on
    first use, inside the running loop, and again after :meth:`close` (a restarted
    service). Its own instance, so closing it never affects other users of the client."""

    def __init__(self, **client_options: Any) -> None:
        self.client_options = client_options
        self._http: AsyncHTTPClient | None = None

    @property
    def http(self) -> AsyncHTTPClient:
        """The HTTP client, created on first use (inside the running loop)."""
        if self._http is None:
            self._http = AsyncHTTPClient(force_instance=True, **self.client_options)
        return self._http

    def close(self) -> None:
        """Close the HTTP client."""
        if self._http is not None:
            self._http.close()
            self._http = None


class GraphApiClient(OutboundHttp):
    def __init__(self, base_url: str, version: str, *, timeout_secs: float, max_clients: int = 10) -> None:
        super().__init__(max_clients=max_clients)
        self.base_url = base_url.rstrip("/")
        self.version = version.strip("/")
        self.timeout_secs = timeout_secs

    async def user_profile(self, instagram_scoped_id: str, access_token: str) -> Profile:
        """Name, username and profile picture of a customer (Instagram-scoped id)."""
        if not instagram_scoped_id.isdigit():
            raise GraphApiError(FAILED, detail="the customer id is not an Instagram-scoped id")
        query = urllib.parse.urlencode({"fields": PROFILE_FIELDS, "access_token": access_token})
        url = f"{self.base_url}/{self.version}/{instagram_scoped_id}?{query}"
        body = await self._request(url, access_token)
        return Profile(
            name=_text(body.get("name")),
            username=_text(body.get("username")),
            profile_pic=_text(body.get("profile_pic")),
        )

    async def message_attachment_urls(self, message_id: str, access_token: str) -> list[str | None]:
        """Fresh links of a message's attachments, in the message's order (``None`` where an
        attachment has none): ``GET /{message-id}?fields=attachments`` answers
        ``{"attachments": {"data": [{"image_data": {"url": …}} | {"video_data": {"url": …}} |
        {"file_url": …}, …]}}`` with newly signed CDN links."""
        query = urllib.parse.urlencode({"fields": MESSAGE_ATTACHMENT_FIELDS, "access_token": access_token})
        url = f"{self.base_url}/{self.version}/{urllib.parse.quote(message_id, safe='')}?{query}"
        body = await self._request(url, access_token)
        attachments = body.get("attachments")
        data = attachments.get("data") if isinstance(attachments, dict) else None
        return [_attachment_url(item) for item in data] if isinstance(data, list) else []

    async def send_message(
        self, account_id: str, recipient_id: str, message: dict[str, Any], access_token: str, *, tag: str | None = None
    ) -> str:
        """One Send API call (``POST /{account}/messages``): Instagram's ``message_id``.

        ``message`` is Meta's message object (``{"text": …}`` or ``{"attachment": …}``);
        ``tag`` ``HUMAN_AGENT`` sends a person's reply after the 24-hour window."""
        body: dict[str, Any] = {"recipient": {"id": recipient_id}, "message": message}
        if tag is not None:
            body.update({"messaging_type": "MESSAGE_TAG", "tag": tag})
        else:
            body["messaging_type"] = "RESPONSE"
        query = urllib.parse.urlencode({"access_token": access_token})
        url = f"{self.base_url}/{self.version}/{urllib.parse.quote(account_id, safe='')}/messages?{query}"
        answer = await self._request(url, access_token, body=orjson.dumps(body))
        message_id = answer.get("message_id")
        if not isinstance(message_id, str) or not message_id:
            raise GraphApiError(TRANSIENT, detail="the Send API answered without a message_id")
        return message_id

    async def _request(self, url: str, access_token: str, *, body: bytes | None = None) -> dict[str, Any]:
        # A GET, or a POST of ``body`` (JSON): the same answers and errors either way.
        request = HTTPRequest(
            url,
            method="GET" if body is None else "POST",
            headers={"Accept": "application/json", **({"Content-Type": "application/json"} if body else {})},
            body=body,
            connect_timeout=self.timeout_secs,
            request_timeout=self.timeout_secs,
            follow_redirects=False,
        )
        try:
            response = await self.http.fetch(request, raise_error=False)
        except HTTPClientError as exc:  # 599: timeout, connection closed
            raise GraphApiError(TRANSIENT, http_status=exc.code, detail=type(exc).__name__) from None
        except OSError as exc:  # refused, unreachable, DNS
            raise GraphApiError(TRANSIENT, detail=type(exc).__name__) from None
        if response.code == 599:
            raise GraphApiError(TRANSIENT, http_status=599, detail=type(response.error).__name__)
        try:
            body = orjson.loads(response.body or b"{}")
        except orjson.JSONDecodeError:
            body = None
        if 200 <= response.code < 300 and isinstance(body, dict) and "error" not in body:
            return body
        error = body.get("error") if isinstance(body, dict) else None
        code = subcode = None
        detail = ""
        if isinstance(error, dict):
            code = _int(error.get("code"))
            subcode = _int(error.get("error_subcode"))
            detail = mask(str(error.get("message") or ""), access_token)[:200]
        raise GraphApiError(
            classify(code, response.code), code=code, subcode=subcode, http_status=response.code, detail=detail
        )


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _attachment_url(item: Any) -> str | None:
    if not isinstance(item, dict):
        return None
    for media in ("image_data", "video_data", "audio_data"):
        nested = item.get(media)
        if isinstance(nested, dict) and _text(nested.get("url")):
            return nested["url"]
    return _text(item.get("file_url"))
