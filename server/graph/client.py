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

from models.channels import FACEBOOK_LOGIN, INSTAGRAM_LOGIN, login_of
from server.graph import errors

PROFILE_FIELDS = "name,username,profile_pic"
MESSAGE_ATTACHMENT_FIELDS = "attachments"

# Re-exported: callers name the categories through this module.
TOKEN_EXPIRED = errors.TOKEN_EXPIRED
UNAVAILABLE = errors.UNAVAILABLE
TRANSIENT = errors.TRANSIENT
FAILED = errors.FAILED
classify = errors.classify

# The webhook fields igsync handles, as each kind of account names them (``subscribed_apps``).
# Instagram Login sends echoes as ``messages`` with ``is_echo``; the Messenger Platform needs
# ``message_echoes`` for them.
WEBHOOK_FIELDS = {
    INSTAGRAM_LOGIN: (
        "messages",
        "message_edit",
        "message_reactions",
        "messaging_postbacks",
        "messaging_referral",
        "messaging_seen",
    ),
    FACEBOOK_LOGIN: (
        "messages",
        "message_echoes",
        "message_edits",
        "message_reactions",
        "message_reads",
        "messaging_postbacks",
        "messaging_referrals",
    ),
}


@dataclass(frozen=True)
class GraphAccount:
    """What a call on behalf of one channel needs: its kind, its ids and its token."""

    login: str
    page_id: str
    instagram_user_id: str | None
    access_token: str

    @classmethod
    def of(cls, channel: dict[str, Any]) -> GraphAccount | None:
        """The account of a channel, or None when it has no token to call with."""
        token = channel.get("access_token")
        if not token:
            return None
        return cls(login_of(channel), channel["page_id"], channel.get("instagram_user_id"), token)

    @property
    def node(self) -> str:
        """The path segment naming the account: the Page for Facebook Login, else the
        Instagram account (``me`` is the token's own account)."""
        if self.login == FACEBOOK_LOGIN:
            return self.page_id
        return self.instagram_user_id or self.page_id


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


@dataclass(frozen=True)
class Page:
    """One page of a Graph API list: its items and the cursor of the next page (None: the last)."""

    items: list[dict[str, Any]]
    after: str | None


class GraphApiClient(OutboundHttp):
    """Calls on behalf of a channel (:class:`GraphAccount`): the host follows the account's kind."""

    def __init__(
        self,
        base_url: str,
        version: str,
        *,
        timeout_secs: float,
        max_clients: int = 10,
        facebook_url: str = "https://graph.facebook.com",
    ) -> None:
        super().__init__(max_clients=max_clients)
        self.hosts = {INSTAGRAM_LOGIN: base_url.rstrip("/"), FACEBOOK_LOGIN: facebook_url.rstrip("/")}
        self.version = version.strip("/")
        self.timeout_secs = timeout_secs

    def _url(self, account: GraphAccount, path: str, **query: str) -> str:
        query["access_token"] = account.access_token
        segments = "/".join(urllib.parse.quote(p, safe="") for p in path.split("/"))
        return f"{self.hosts[account.login]}/{self.version}/{segments}?{urllib.parse.urlencode(query)}"

    async def user_profile(self, account: GraphAccount, instagram_scoped_id: str) -> Profile:
        """Name, username and profile picture of a customer (Instagram-scoped id)."""
        if not instagram_scoped_id.isdigit():
            raise GraphApiError(FAILED, detail="the customer id is not an Instagram-scoped id")
        body = await self._request(self._url(account, instagram_scoped_id, fields=PROFILE_FIELDS), account)
        return Profile(
            name=_text(body.get("name")),
            username=_text(body.get("username")),
            profile_pic=_text(body.get("profile_pic")),
        )

    async def message_attachment_urls(self, account: GraphAccount, message_id: str) -> list[str | None]:
        """Fresh links of a message's attachments, in the message's order (``None`` where an
        attachment has none): ``GET /{message-id}?fields=attachments`` answers
        ``{"attachments": {"data": [{"image_data": {"url": …}} | {"video_data": {"url": …}} |
        {"file_url": …}, …]}}`` with newly signed CDN links."""
        body = await self._request(self._url(account, message_id, fields=MESSAGE_ATTACHMENT_FIELDS), account)
        attachments = body.get("attachments")
        data = attachments.get("data") if isinstance(attachments, dict) else None
        return [_attachment_url(item) for item in data] if isinstance(data, list) else []

    async def send_message(
        self, account: GraphAccount, recipient_id: str, message: dict[str, Any], *, tag: str | None = None
    ) -> str:
        """One Send API call (``POST /{account}/messages``): Instagram's ``message_id``.

        ``message`` is Meta's message object (``{"text": …}`` or ``{"attachment": …}``);
        ``tag`` ``HUMAN_AGENT`` sends a person's reply after the 24-hour window."""
        body: dict[str, Any] = {"recipient": {"id": recipient_id}, "message": message}
        if tag is not None:
            body.update({"messaging_type": "MESSAGE_TAG", "tag": tag})
        else:
            body["messaging_type"] = "RESPONSE"
        url = self._url(account, f"{account.node}/messages")
        answer = await self._request(url, account, body=orjson.dumps(body))
        message_id = answer.get("message_id")
        if not isinstance(message_id, str) or not message_id:
            raise GraphApiError(TRANSIENT, detail="the Send API answered without a message_id")
        return message_id

    # -- tokens and subscriptions -----------------------------------------------------------

    async def refresh_token(self, account: GraphAccount) -> tuple[str, int]:
        """Instagram Login only: a new long-lived token for ``account``'s (at least a day old,
        unexpired) one: ``(token, expires_in seconds)``."""
        query = urllib.parse.urlencode({"grant_type": "ig_refresh_token", "access_token": account.access_token})
        body = await self._request(f"{self.hosts[INSTAGRAM_LOGIN]}/refresh_access_token?{query}", account)
        token, expires_in = body.get("access_token"), _int(body.get("expires_in"))
        if not isinstance(token, str) or not token or expires_in is None:
            raise GraphApiError(TRANSIENT, detail="the refresh answered without a token or expiry")
        return token, expires_in

    async def subscribe(self, account: GraphAccount, fields: tuple[str, ...]) -> None:
        """Subscribe the account to the app's webhooks for ``fields`` (``POST subscribed_apps``)."""
        url = self._url(account, f"{self._owner_node(account)}/subscribed_apps", subscribed_fields=",".join(fields))
        answer = await self._request(url, account, body=b"")
        if answer.get("success") is not True:
            raise GraphApiError(TRANSIENT, detail="the subscription was not confirmed")

    async def subscribed_fields(self, account: GraphAccount) -> list[str] | None:
        """The webhook fields the account is subscribed to for this app; None: not subscribed."""
        body = await self._request(self._url(account, f"{self._owner_node(account)}/subscribed_apps"), account)
        data = body.get("data")
        if not isinstance(data, list) or not data:
            return None
        fields: list[str] = []
        for app in data:
            listed = app.get("subscribed_fields") if isinstance(app, dict) else None
            fields.extend(f for f in listed or [] if isinstance(f, str))
        return sorted(set(fields))

    # -- the Conversations API ----------------------------------------------------------------

    async def conversations(self, account: GraphAccount, after: str | None = None) -> Page:
        """One page of the account's Instagram conversations, most recently active first:
        items ``{"id", "updated_time"}``."""
        query = {"platform": "instagram", "fields": "id,updated_time"}
        if after:
            query["after"] = after
        body = await self._request(self._url(account, f"{self._owner_node(account)}/conversations", **query), account)
        return _page(body)

    async def conversation_messages(
        self, account: GraphAccount, conversation_id: str, after: str | None = None
    ) -> Page:
        """One page of a conversation's messages, newest first: items ``{"id", "created_time"}``."""
        query = {"fields": "messages"} if not after else {"fields": "messages", "after": after}
        body = await self._request(self._url(account, conversation_id, **query), account)
        messages = body.get("messages")
        return _page(messages if isinstance(messages, dict) else body)

    async def message_details(self, account: GraphAccount, message_id: str) -> dict[str, Any]:
        """One message: ``id``, ``created_time``, ``from``, ``to``, ``message`` (text) and
        ``attachments``. Meta answers this only for a thread's 20 most recent messages."""
        fields = "id,created_time,from,to,message,attachments,is_unsupported"
        return await self._request(self._url(account, message_id, fields=fields), account)

    @staticmethod
    def _owner_node(account: GraphAccount) -> str:
        return account.page_id if account.login == FACEBOOK_LOGIN else "me"

    async def _request(self, url: str, account: GraphAccount, *, body: bytes | None = None) -> dict[str, Any]:
        # A GET, or a POST of ``body`` (JSON): the same answers and errors either way.
        access_token = account.access_token
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
            answer = orjson.loads(response.body or b"{}")
        except orjson.JSONDecodeError:
            answer = None
        if 200 <= response.code < 300 and isinstance(answer, dict) and "error" not in answer:
            return answer
        error = answer.get("error") if isinstance(answer, dict) else None
        code = subcode = None
        detail = ""
        is_transient = False
        if isinstance(error, dict):
            code = _int(error.get("code"))
            subcode = _int(error.get("error_subcode"))
            detail = mask(str(error.get("message") or ""), access_token)[:200]
            is_transient = error.get("is_transient") is True
        raise GraphApiError(
            classify(code, response.code, subcode, is_transient=is_transient),
            code=code,
            subcode=subcode,
            http_status=response.code,
            detail=detail,
        )


def _page(body: dict[str, Any]) -> Page:
    data = body.get("data")
    items = [d for d in data if isinstance(d, dict)] if isinstance(data, list) else []
    paging = body.get("paging")
    after = None
    if isinstance(paging, dict) and paging.get("next"):
        cursors = paging.get("cursors")
        after = _text(cursors.get("after")) if isinstance(cursors, dict) else None
    return Page(items, after)


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
