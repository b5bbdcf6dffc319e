"""Turning one Instagram webhook body into plain, typed items — no I/O, no Tornado.

Meta batches: one POST holds several ``entry`` objects, each with several ``messaging``
(or ``standby``, when another app owns the thread) items; the App Dashboard's "Test"
button and some subscriptions use ``changes[]`` with the item under ``value``. Every one
of them becomes one :class:`WebhookItem`, in order, so that the response can answer item
by item. Shapes and their doubts are in ``tests/fixtures/instagram/README.md``.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from models.timeutil import from_epoch_ms, utcnow

# Attachment types that carry a file we keep a copy of (media worker). Shared posts and
# reels are included: their preview is a signed CDN link that expires like any other.
MEDIA_TYPES = frozenset({"image", "audio", "video", "file", "story_mention", "share", "ig_post", "ig_reel", "reel"})
# Attachment types Instagram documents; anything else is stored as ``unsupported``.
KNOWN_ATTACHMENT_TYPES = MEDIA_TYPES | {"share", "ig_reel", "ig_post", "reel", "template", "fallback"}
# Meta's dashboard "Test" sample keeps fixed values; it is not a chat.
TEST_ENTRY_ID = "0"
TEST_MID = "random_mid"

KIND_MESSAGE = "message"
KIND_REACTION = "reaction"
KIND_READ = "read"
KIND_EDIT = "edit"
KIND_UNSEND = "unsend"
KIND_TEST = "test"
KIND_INVALID = "invalid"

# Instagram's ids (IGSIDs, account and page ids) are decimal digit strings; Meta sends them as
# JSON strings (a number is taken too). Anything else — a list, an object, text — is refused
# here, before a customer or conversation could be created for it.
MAX_ID_DIGITS = 32
# A mid is an opaque base64-like string of about 100–200 characters; the bound keeps a
# hostile body from filling the unique index with megabyte keys.
MAX_MID_CHARS = 1024
# Free-form objects stored from Meta (``referral.ads_context_data``): at most this many keys.
MAX_FREE_FORM_KEYS = 64
MAX_FREE_FORM_KEY_CHARS = 128


class PayloadError(ValueError):
    """The body is not an Instagram webhook at all (→ 400)."""


@dataclass
class WebhookItem:
    """One event of a webhook body, normalised.

    ``kind`` says which fields matter. Message items carry the stored message's fields
    (``message_type``, ``content``, ``attachments``…); reaction/read/edit/unsend items
    name the message they are about in ``target_mid``.
    """

    kind: str
    entry_id: str
    source: str  # messaging | standby | changes
    sender_id: str | None = None
    recipient_id: str | None = None
    timestamp: dt.datetime = field(default_factory=utcnow)
    mid: str | None = None
    is_echo: bool = False
    app_id: str | None = None
    content: str = ""
    message_type: str = "text"
    attachments: list[dict[str, Any]] = field(default_factory=list)
    reply_to: dict[str, Any] | None = None
    quick_reply: dict[str, Any] | None = None
    postback: dict[str, Any] | None = None
    referral: dict[str, Any] | None = None
    target_mid: str | None = None
    reaction: dict[str, Any] | None = None
    num_edit: int | None = None
    error: str | None = None

    @property
    def media_url(self) -> str | None:
        """The first downloadable attachment's link, or None."""
        for att in self.attachments:
            if att.get("type") in MEDIA_TYPES and att.get("url"):
                return att["url"]
        # A story reply shows the story it answers; the story's link expires within a day.
        story = (self.reply_to or {}).get("story") or {}
        return story.get("url")

    @property
    def has_media(self) -> bool:
        """Whether the item carries a downloadable attachment."""
        return self.media_url is not None


def parse_body(payload: Any) -> list[WebhookItem]:
    """All items of a parsed webhook body, in order; :class:`PayloadError` if it is not one."""
    if not isinstance(payload, dict) or payload.get("object") != "instagram":
        raise PayloadError('the body is not an Instagram webhook (object must be "instagram")')
    entries = payload.get("entry")
    if entries is None:
        return []
    if not isinstance(entries, list):
        raise PayloadError("entry must be a list")
    items: list[WebhookItem] = []
    for entry in entries:
        if not isinstance(entry, dict):
            items.append(WebhookItem(kind=KIND_INVALID, entry_id="", source="entry", error="entry is not an object"))
            continue
        entry_id = instagram_id(entry.get("id")) or ""
        entry_time = entry.get("time")
        for source in ("messaging", "standby"):
            for raw in _as_list(entry.get(source)):
                items.append(parse_messaging(raw, entry_id, source, entry_time))
        for change in _as_list(entry.get("changes")):
            items.append(_parse_change(change, entry_id, entry_time))
    return items


def _parse_change(change: Any, entry_id: str, entry_time: Any) -> WebhookItem:
    if not isinstance(change, dict) or not isinstance(change.get("value"), dict):
        return WebhookItem(kind=KIND_INVALID, entry_id=entry_id, source="changes", error="change without a value")
    value = change["value"]
    mid = (value.get("message") or {}).get("mid") if isinstance(value.get("message"), dict) else None
    if entry_id == TEST_ENTRY_ID or mid == TEST_MID:
        return WebhookItem(kind=KIND_TEST, entry_id=entry_id, source="changes", mid=mid)
    if change.get("field") not in (
        "messages",
        "messaging_postbacks",
        "message_reactions",
        "messaging_seen",
        "message_edit",
        "messaging_referral",
    ):
        return WebhookItem(
            kind=KIND_INVALID,
            entry_id=entry_id,
            source="changes",
            error=f"unsupported change field {change.get('field')!r}",
        )
    return parse_messaging(value, entry_id, "changes", entry_time)


def parse_messaging(raw: Any, entry_id: str, source: str, entry_time: Any = None) -> WebhookItem:
    """One ``messaging``/``standby`` item (or a ``changes`` value shaped like one)."""
    if not isinstance(raw, dict):
        return WebhookItem(kind=KIND_INVALID, entry_id=entry_id, source=source, error="item is not an object")
    item = WebhookItem(
        kind=KIND_MESSAGE,
        entry_id=entry_id,
        source=source,
        sender_id=_id_of(raw.get("sender")),
        recipient_id=_id_of(raw.get("recipient")),
        timestamp=_timestamp(raw.get("timestamp"), entry_time),
    )
    if not item.sender_id or not item.recipient_id:
        return _invalid(item, "the item has no valid sender.id or recipient.id (Instagram ids are digit strings)")

    message = raw.get("message")
    if isinstance(raw.get("reaction"), dict):
        return _reaction(item, raw["reaction"])
    if isinstance(raw.get("read"), dict):
        item.kind = KIND_READ
        item.target_mid = _mid(raw["read"].get("mid"))
        return item if item.target_mid else _invalid(item, "the read receipt has no valid mid")
    if isinstance(raw.get("message_edit"), dict):
        return _edit(item, raw["message_edit"])
    if isinstance(raw.get("postback"), dict):
        pb = raw["postback"]
        item.mid = _mid(pb.get("mid"))
        item.message_type = "postback"
        item.content = _str(pb.get("title")) or ""
        item.postback = {"title": _str(pb.get("title")), "payload": _str(pb.get("payload"))}
        return item if item.mid else _invalid(item, "the postback has no valid mid")
    if isinstance(message, dict):
        return _message(item, message)
    if isinstance(raw.get("referral"), dict):
        # A standalone referral (ad or ig.me link opening a thread) has no mid of its own;
        # derive a stable one so that redelivery stays idempotent.
        ref = _referral(raw["referral"])
        item.message_type = "referral"
        item.referral = ref
        anchor = ref.get("ref") or ref.get("ad_id") or ""
        item.mid = f"referral:{item.sender_id}:{anchor}:{int(item.timestamp.timestamp() * 1000)}"
        return item
    return _invalid(item, "the item holds no message, reaction, read, edit, postback or referral")


def _message(item: WebhookItem, message: dict[str, Any]) -> WebhookItem:
    item.mid = _mid(message.get("mid"))
    item.is_echo = bool(message.get("is_echo"))
    item.app_id = _str(message.get("app_id"))
    if not item.mid:
        return _invalid(item, "the message has no valid mid")
    if message.get("is_deleted"):
        item.kind = KIND_UNSEND
        item.target_mid = item.mid
        return item
    text = message.get("text")
    item.content = text if isinstance(text, str) else ""
    item.attachments = [_attachment(a) for a in _as_list(message.get("attachments")) if isinstance(a, dict)]
    reply_to = message.get("reply_to")
    if isinstance(reply_to, dict):
        if isinstance(reply_to.get("story"), dict):
            story = reply_to["story"]
            item.reply_to = {"story": {"id": _str(story.get("id")), "url": _str(story.get("url"))}}
        elif _mid(reply_to.get("mid")):
            item.reply_to = {"mid": _mid(reply_to.get("mid"))}
    if isinstance(message.get("quick_reply"), dict):
        item.quick_reply = {"payload": _str(message["quick_reply"].get("payload"))}
    if isinstance(message.get("referral"), dict):
        item.referral = _referral(message["referral"])
    item.message_type = _message_type(message, item)
    return item


def _message_type(message: dict[str, Any], item: WebhookItem) -> str:
    if message.get("is_unsupported"):
        return "unsupported"
    if item.quick_reply is not None:
        return "quick_reply"
    if item.reply_to and "story" in item.reply_to:
        return "story_reply"
    types = [a["type"] for a in item.attachments]
    if types:
        # The post-share transition sends ``share`` + ``ig_post`` together: the specific one wins.
        for specific in ("ig_post", "ig_reel", "story_mention"):
            if specific in types:
                return specific
        first = types[0]
        if first == "reel":
            return "ig_reel"
        return first if first in KNOWN_ATTACHMENT_TYPES - {"template", "fallback"} else "unsupported"
    return "text"


def _attachment(raw: dict[str, Any]) -> dict[str, Any]:
    payload = raw.get("payload") if isinstance(raw.get("payload"), dict) else {}
    att: dict[str, Any] = {"type": _str(raw.get("type")) or "unknown", "url": _str(payload.get("url"))}
    for key in ("title", "ig_post_media_id", "reel_video_id", "id", "sticker_id"):
        if payload.get(key) is not None:
            att[key] = _str(payload.get(key))
    return att


def _referral(raw: dict[str, Any]) -> dict[str, Any]:
    ref = {k: _str(raw.get(k)) for k in ("ref", "ad_id", "source", "type") if raw.get(k) is not None}
    ctx = raw.get("ads_context_data")
    if isinstance(ctx, dict):
        ref["ads_context_data"] = {
            mongo_safe_key(k): _str(v) for k, v in list(ctx.items())[:MAX_FREE_FORM_KEYS] if v is not None
        }
    return ref


def _reaction(item: WebhookItem, raw: dict[str, Any]) -> WebhookItem:
    item.kind = KIND_REACTION
    item.target_mid = _mid(raw.get("mid"))
    action = _str(raw.get("action")) or "react"
    item.reaction = {"action": action, "reaction": _str(raw.get("reaction")), "emoji": _str(raw.get("emoji"))}
    if not item.target_mid:
        return _invalid(item, "the reaction has no valid mid")
    return item


def _edit(item: WebhookItem, raw: dict[str, Any]) -> WebhookItem:
    item.kind = KIND_EDIT
    item.target_mid = _mid(raw.get("mid"))
    text = raw.get("text")
    item.content = text if isinstance(text, str) else ""
    try:
        item.num_edit = int(raw.get("num_edit")) if raw.get("num_edit") is not None else None
    except (TypeError, ValueError):
        item.num_edit = None
    if not item.target_mid:
        return _invalid(item, "the edit has no valid mid")
    return item


def _invalid(item: WebhookItem, reason: str) -> WebhookItem:
    item.kind = KIND_INVALID
    item.error = reason
    return item


def instagram_id(value: Any) -> str | None:
    """``value`` as an Instagram id (a string of 1–32 decimal digits), or None."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        value = str(value)
    if isinstance(value, str) and 0 < len(value) <= MAX_ID_DIGITS and value.isascii() and value.isdigit():
        return value
    return None


def mongo_safe_key(key: Any) -> str:
    """A key from a free-form object of Meta's, made storable: MongoDB refuses a NUL in a key,
    and ``$``-prefixed or dotted keys are operators and paths to its query language."""
    text = (key if isinstance(key, str) else str(key)).replace("\x00", "")[:MAX_FREE_FORM_KEY_CHARS]
    text = text.replace(".", "_")
    if text.startswith("$"):
        text = "_" + text[1:]
    return text or "_"


def _id_of(party: Any) -> str | None:
    return instagram_id(party.get("id")) if isinstance(party, dict) else None


def _mid(value: Any) -> str | None:
    """A mid: a non-empty string of bounded length without NUL bytes, or None."""
    if isinstance(value, str) and 0 < len(value) <= MAX_MID_CHARS and "\x00" not in value:
        return value
    return None


def _str(value: Any) -> str | None:
    if value is None:
        return None
    return value if isinstance(value, str) else str(value)


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _timestamp(value: Any, entry_time: Any) -> dt.datetime:
    """Meta sends milliseconds; the dashboard sample sends seconds as a string."""
    for candidate in (value, entry_time):
        try:
            number = float(candidate)
        except (TypeError, ValueError):
            continue
        if number <= 0:
            continue
        if number < 1e11:  # seconds, not milliseconds
            number *= 1000
        try:
            return from_epoch_ms(number)
        except (OverflowError, OSError, ValueError):
            continue
    return utcnow()
