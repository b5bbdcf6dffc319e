"""Outages longer than Meta's redelivery, noticed and repaired.

Owns :class:`GapWatch`: every ``heartbeat_secs`` each process records that it is up
(:mod:`models.heartbeats`). When a beat finds the previous one older than
``meta_retry_window_secs``, nothing took webhooks for longer than Meta keeps retrying them —
igsync was down, or its store was (a beat cannot be written then either) — and messages of
that time may never come. The gap is recorded once (its id is its start) and a repair run is
queued for every connected channel with a token: the conversations active since the gap
began are read again from the Conversations API (:mod:`server.accounts.history`), and what
only Meta has is stored and announced like a webhook's message.

A channel back from ``needs_reauth`` gets a repair of its own (:meth:`GapWatch.channel_gap`):
Meta may have stopped sending its webhooks while the app's access was revoked.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from typing import Any

from models import history_runs as runs_model
from models.store import Store
from models.timeutil import utcnow
from server.ops.loops import PollingLoop

log = logging.getLogger("igsync.gaps")

# A repair reads from a little before the gap: a message Meta stamped just before the last beat
# may have been in flight when the outage began.
REPAIR_MARGIN = dt.timedelta(minutes=5)


class GapWatch:
    def __init__(
        self,
        store: Store,
        *,
        heartbeat_secs: float,
        retry_window_secs: float,
        on_queued: Callable[[], None],
    ) -> None:
        self.store = store
        self.retry_window = dt.timedelta(seconds=retry_window_secs)
        self.on_queued = on_queued
        self.loop = PollingLoop("gap watch", self.beat, poll_secs=heartbeat_secs, stop_wait_secs=5.0, log=log)

    async def start(self) -> None:
        """Beat now (an outage that just ended is noticed at start-up), then periodically."""
        self.loop.start()

    async def stop(self) -> None:
        """Stop beating."""
        await self.loop.stop()

    async def beat(self) -> bool:
        """Record this beat; queue repairs when the previous one is older than Meta retries."""
        now = utcnow()
        previous = await self.store.heartbeats.beat(now)
        if previous is not None and now - previous > self.retry_window:
            gap = await self.store.heartbeats.record_gap(previous, now, "outage")
            if gap is not None:
                log.warning(
                    "gap: nothing took webhooks from %s to %s (%.0f s, longer than Meta retries): repairing",
                    previous.isoformat(),
                    now.isoformat(),
                    (now - previous).total_seconds(),
                )
                await self.queue_repairs(gap)
        return False

    async def channel_gap(self, channel: dict[str, Any], since: dt.datetime) -> None:
        """A channel reconnected after ``needs_reauth`` (since ``since``): repair its conversations."""
        gap = await self.store.heartbeats.record_gap(since, utcnow(), "needs_reauth", channel["_id"])
        if gap is not None:
            await self.queue_repairs(gap)

    async def queue_repairs(self, gap: dict[str, Any]) -> int:
        """One repair run per channel the gap concerns; how many were queued now."""
        if gap.get("channel_id") is not None:
            channels = [c for c in [await self.store.channels.get(gap["channel_id"])] if c is not None]
        else:
            channels = [c for c in await self.store.channels.list() if c.get("is_connect")]
        queued = 0
        for channel in channels:
            if not channel.get("access_token"):
                continue  # nothing can be read without a token; reconnecting queues it (needs_reauth)
            _, new = await self.store.history_runs.queue(
                runs_model.repair_id(channel["_id"], gap["_id"]),
                channel["_id"],
                runs_model.REPAIR,
                gap["start"] - REPAIR_MARGIN,
                restart=False,
            )
            queued += int(new)
        if queued:
            self.on_queued()
        return queued
