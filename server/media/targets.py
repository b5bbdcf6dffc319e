"""What of a stored message is downloaded, and how its download states add up.

:func:`media_targets` lists a message's downloadable parts — each attachment, the story a
reply answers (``reply_to.story``) and the creative of the ad it came from
(``referral.media.<kind>``); :func:`aggregate_status` folds their states into the message's
``processing_status``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from server.ingest import parse as wp

STORY_KEY = "reply_to.story"
# Copies of an ad's creative (the ad a conversation came from), recorded under
# ``referral.media.<kind>``; the links in ``referral.ads_context_data`` expire like any other.
AD_CREATIVE_KEYS = {"photo_url": "referral.media.photo", "video_url": "referral.media.video"}
AD_CREATIVE = "ad_creative"
PENDING = "pending"
COMPLETED = "completed"
FAILED = "failed"


@dataclass(frozen=True)
class MediaTarget:
    """One file to download for a message. ``keys`` are its paths in the message document:
    several when attachments share a URL (a post share arrives as ``share`` + ``ig_post``
    with one link during Meta's transition) — downloaded once, recorded on each."""

    keys: tuple[str, ...]
    type: str
    url: str

    @property
    def key(self) -> str:
        """The target's primary key (where its state is recorded)."""
        return self.keys[0]

    @property
    def is_content(self) -> bool:
        """Part of what the message shows (attachments, the replied story), which its
        ``processing_status`` is about — not the creative of the ad it came from."""
        return any(not key.startswith("referral.") for key in self.keys)


def media_targets(message: dict[str, Any]) -> list[MediaTarget]:
    """Attachments of a downloadable type with a URL, the story a reply answers (stories
    vanish after 24 hours — the reply is meaningless without it), and the creative of the ad
    the message came from (what the customer was looking at when they wrote)."""
    found: dict[str, tuple[list[str], str]] = {}
    for i, att in enumerate(message.get("attachments") or []):
        if att.get("type") in wp.MEDIA_TYPES and att.get("url"):
            found.setdefault(att["url"], ([], att["type"]))[0].append(f"attachments.{i}")
    story = (message.get("reply_to") or {}).get("story") or {}
    if story.get("url"):
        found.setdefault(story["url"], ([], "story"))[0].append(STORY_KEY)
    ad = (message.get("referral") or {}).get("ads_context_data") or {}
    for field_name, key in AD_CREATIVE_KEYS.items():
        if isinstance(ad.get(field_name), str) and ad[field_name]:
            found.setdefault(ad[field_name], ([], AD_CREATIVE))[0].append(key)
    return [MediaTarget(tuple(keys), kind, url) for url, (keys, kind) in found.items()]


def target_state(message: dict[str, Any], key: str) -> dict[str, Any]:
    """The recorded state of one target of a message."""
    node: Any = message
    for part in key.split("."):
        if isinstance(node, list):
            node = node[int(part)] if part.isdigit() and int(part) < len(node) else None
        elif isinstance(node, dict):
            node = node.get(part)
        if node is None:
            return {}
    return node if isinstance(node, dict) else {}


def aggregate_status(message: dict[str, Any]) -> str:
    """``pending`` while any content target is, ``failed`` if any failed, else ``completed``."""
    content = [t for t in media_targets(message) if t.is_content]
    states = [target_state(message, t.key).get("processing_status") or PENDING for t in content]
    if not states:
        return COMPLETED
    if PENDING in states:
        return PENDING
    return FAILED if FAILED in states else COMPLETED
