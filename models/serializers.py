"""Stored documents → the API's JSON shapes (API.md: WSMessage, Conversation, Channel).

One function per shape, used by REST, WebSocket events, webhook responses and triggers
alike, so the inbox sees one shape wherever a message comes from.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit, urlunsplit

from bson import ObjectId

from models.media_files import media_url
from models.messaging_window import reply_window
from models.timeutil import iso

WS_MESSAGE_FIELDS = (
    "id",
    "content",
    "type",
    "customer",
    "conversation_id",
    "is_ai_response",
    "is_answered",
    "created_at",
    "feedback",
    "feedback_comment",
    "feedback_at",
    "message_type",
    "media_url",
    "media_file",
    "processing_status",
    "transcription",
    "source",
    "mid",
    "sent_at",
    "reply_to",
    "attachments",
    "reactions",
    "is_deleted",
    "edited_at",
    "read_at",
    "delivery_status",
    "delivery_error",
)
CUSTOMER_FIELDS = (
    "id",
    "instagram_id",
    "first_name",
    "last_name",
    "username",
    "profile_pic",
    "profile_pic_file",
    "enhanced_data_fetched",
)
CONVERSATION_FIELDS = (
    "id",
    "channel_id",
    "customer",
    "source",
    "status",
    "unread_count",
    "last_message",
    "created_at",
    "updated_at",
    "last_customer_message_at",
    "reply_window",
)


def _id(value: Any) -> str | None:
    return None if value is None else str(value)


def _plain(value: Any) -> Any:
    """Nested values (attachments, reactions, referral…) with ids and times as strings."""
    if isinstance(value, ObjectId):
        return str(value)
    if hasattr(value, "isoformat"):
        return iso(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def ws_message(doc: dict[str, Any]) -> dict[str, Any]:
    """A stored message as API.md §3 shows it (REST and WebSocket alike)."""
    media_file = doc.get("media_file")
    if media_file is not None and not isinstance(media_file, str):
        media_file = media_url(media_file)
    out = {
        "id": _id(doc["_id"]),
        "content": "" if doc.get("is_deleted") else doc.get("content", ""),
        "type": doc["type"],
        "customer": _id(doc.get("customer_id")),
        "conversation_id": _id(doc.get("conversation_id")),
        "is_ai_response": bool(doc.get("is_ai_response", False)),
        "is_answered": bool(doc.get("is_answered", False)),
        "created_at": iso(doc.get("created_at")),
        "feedback": doc.get("feedback"),
        "feedback_comment": doc.get("feedback_comment"),
        "feedback_at": iso(doc.get("feedback_at")),
        "message_type": doc.get("message_type", "text"),
        "media_url": doc.get("media_url"),
        "media_file": media_file,
        "processing_status": doc.get("processing_status", "completed"),
        "transcription": doc.get("transcription"),
        "source": doc.get("source"),
        "mid": doc.get("mid"),
        "sent_at": iso(doc.get("sent_at")),
        "reply_to": _plain(doc.get("reply_to")),
        "attachments": _plain(doc.get("attachments") or []),
        "reactions": _plain(doc.get("reactions") or []),
        "is_deleted": bool(doc.get("is_deleted", False)),
        "edited_at": iso(doc.get("edited_at")),
        "read_at": iso(doc.get("read_at")),
        # Sent through igsync: pending → sent | failed; None for every other message.
        "delivery_status": doc.get("delivery_status"),
        "delivery_error": _plain(doc.get("delivery_error")),
    }
    # Extra context the inbox renders; absent keys stay absent to keep events small.
    for extra in ("postback", "quick_reply", "referral", "edit_history", "client_message_id"):
        if doc.get(extra) is not None:
            out[extra] = _plain(doc[extra])
    return out


def customer(snapshot: dict[str, Any]) -> dict[str, Any]:
    """A customer document or the snapshot embedded in a conversation."""
    cid = snapshot.get("id", snapshot.get("_id"))
    return {
        "id": _id(cid),
        "instagram_id": snapshot.get("instagram_id"),
        "first_name": snapshot.get("first_name"),
        "last_name": snapshot.get("last_name"),
        "username": snapshot.get("username"),
        "profile_pic": snapshot.get("profile_pic"),
        "profile_pic_file": snapshot.get("profile_pic_file"),
        "enhanced_data_fetched": bool(snapshot.get("enhanced_data_fetched", False)),
    }


def last_message(summary: dict[str, Any] | None) -> dict[str, Any] | None:
    """A conversation's ``last_message`` as API.md §3 shows it."""
    if summary is None:
        return None
    return {
        "id": _id(summary.get("id")),
        "content": summary.get("content", ""),
        "type": summary.get("type"),
        "message_type": summary.get("message_type", "text"),
        "created_at": iso(summary.get("created_at")),
    }


def conversation(doc: dict[str, Any]) -> dict[str, Any]:
    """A stored conversation as API.md §3 shows it."""
    return {
        "id": _id(doc["_id"]),
        "channel_id": _id(doc["channel_id"]),
        "customer": customer(doc.get("customer") or {"id": doc.get("customer_id")}),
        "source": doc.get("source", "instagram"),
        "status": doc.get("status"),
        "unread_count": int(doc.get("unread_count") or 0),
        "last_message": last_message(doc.get("last_message")),
        "created_at": iso(doc.get("created_at")),
        "updated_at": iso(doc.get("updated_at")),
        "last_customer_message_at": iso(doc.get("last_customer_message_at")),
        "reply_window": reply_window(doc.get("last_customer_message_at")),
    }


def channel(doc: dict[str, Any]) -> dict[str, Any]:
    """Never the access token, never a trigger secret."""
    out = {
        "id": _id(doc["_id"]),
        "page_id": doc["page_id"],
        "instagram_user_id": doc.get("instagram_user_id"),
        "username": doc.get("username"),
        "owner": doc.get("owner"),
        "is_connect": bool(doc.get("is_connect", False)),
        "created_at": iso(doc.get("created_at")),
        "ai_enabled": bool(doc.get("ai_enabled", True)),
    }
    if doc.get("needs_reauth"):
        out["needs_reauth"] = True
    out["login"] = doc.get("login") or "instagram_login"
    out["token_expires_at"] = iso(doc.get("token_expires_at"))
    subscription = doc.get("subscription")
    out["subscription_state"] = subscription.get("state") if isinstance(subscription, dict) else None
    out["triggers"] = channel_triggers(doc.get("triggers"))
    return out


def channel_triggers(triggers: dict[str, Any] | None) -> dict[str, Any]:
    """A channel's trigger targets as shown: never the secret, and the URL without user info
    or query (a credential someone put there must not reach inbox clients)."""
    triggers = triggers or {}
    http = triggers.get("http")
    shown_http = None
    if http:
        shown_http = {
            "url": _display_url(http.get("url", "")),
            "timeout_secs": http.get("timeout_secs"),
            "max_attempts": http.get("max_attempts"),
            "secret_set": bool(http.get("secret")),
        }
    return {"http": shown_http, "redis_stream": bool(triggers.get("redis_stream", False))}


def _display_url(url: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = host if parts.port is None else f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))
