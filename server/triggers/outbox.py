"""Workflow triggers, outbox side: which customer messages are handed to workers, and to which targets.

:class:`TriggerOutbox` is a :class:`~server.ingest.recorder.BeforeStoreHook`. A customer message
is stored *with* its trigger mark (``trigger_pending`` and the channel's targets at that
moment): one write, so the message never exists without it, a failure is the message's own
503, and the webhook pays no extra round trip. The dispatcher (:mod:`server.triggers.delivery`)
turns marks into ``trigger_jobs`` (one per message and target) off the hot path. Echoes and
outbound messages are never marked; neither are messages of a channel with ``ai_enabled:
false`` (their history is stored as always).

What a receiver gets is :mod:`server.triggers.protocol`; dead letters :mod:`server.triggers.admin`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

from bson import ObjectId

from models.cache import TtlLru
from models.messages import IMPORTED_BACKFILL, TYPE_CUSTOMER
from models.store import Store
from models.timeutil import utcnow
from models.trigger_jobs import TARGET_HTTP, TARGET_REDIS_STREAM, mark_for_triggers

# Channels whose trigger settings one process keeps at once.
CHANNELS_CACHED = 10_000


# A repaired message (missed during an outage) still reaches the workflows while Meta lets the
# business answer it with a normal reply; older ones, and every history import, do not.
REPAIRED_TRIGGER_MAX_AGE = dt.timedelta(hours=24)


def _wants_triggers(message: dict[str, Any]) -> bool:
    imported = message.get("imported")
    if imported is None:
        return True
    if imported == IMPORTED_BACKFILL:
        return False
    sent_at = message.get("sent_at")
    return isinstance(sent_at, dt.datetime) and utcnow() - sent_at < REPAIRED_TRIGGER_MAX_AGE


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
        # channel id → channel: the trigger settings are read on every customer message, so a
        # change made elsewhere takes effect within channel_cache_secs (0: read every time).
        self._channels: TtlLru[ObjectId, dict[str, Any] | None] = TtlLru(CHANNELS_CACHED, channel_cache_secs)

    async def before_message_stored(self, message: dict[str, Any]) -> None:
        """Mark a customer message for its channel's trigger targets."""
        if message.get("type") != TYPE_CUSTOMER or not _wants_triggers(message):
            return
        targets = channel_targets(await self._channel(message["channel_id"]))
        if not targets:
            return
        mark_for_triggers(message, targets)
        if self.on_recorded is not None:
            self.on_recorded()

    async def _channel(self, channel_id: ObjectId) -> dict[str, Any] | None:
        hit, channel = self._channels.lookup(channel_id)
        if hit:
            return channel
        channel = await self.store.channels.get(channel_id)
        self._channels.put(channel_id, channel)
        return channel
