"""Meta's per-account send rates, kept by each process: a token bucket per (channel, kind).

Meta allows an Instagram account about 300 Send API calls per second for text (and links,
stickers, reactions) and 10 per second for audio and video. A process never exceeds them on
its own; several processes sending for one account share nothing here — their sum could —
and Meta's answer (a rate-limit code) is then retried with backoff like any other transient
error (:mod:`server.outbound.worker`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

SLOW_KINDS = ("audio", "video")


class TokenBucket:
    """``rate`` tokens per second, up to ``rate`` at once (one second's worth of burst)."""

    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.clock = clock
        self.tokens = rate
        self.updated = clock()

    def wait_secs(self) -> float:
        """Take a token if there is one (0.0), else how long until there will be."""
        now = self.clock()
        self.tokens = min(self.rate, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / self.rate


class SendLimiter:
    def __init__(self, *, text_per_sec: float, media_per_sec: float) -> None:
        self.text_per_sec = text_per_sec
        self.media_per_sec = media_per_sec
        self._buckets: dict[tuple[str, bool], TokenBucket] = {}

    def bucket(self, channel_id: str, kind: str) -> TokenBucket:
        """The bucket of this channel's calls of this kind (audio/video, or everything else)."""
        slow = kind in SLOW_KINDS
        key = (channel_id, slow)
        if key not in self._buckets:
            self._buckets[key] = TokenBucket(self.media_per_sec if slow else self.text_per_sec)
        return self._buckets[key]

    async def acquire(self, channel_id: str, kind: str) -> None:
        """Wait until a call of ``kind`` for this channel is within Meta's rate."""
        bucket = self.bucket(channel_id, kind)
        # Pacing, not correctness: a wait for a token to come, then another try for it.
        wait = bucket.wait_secs()
        while wait > 0:
            await asyncio.sleep(wait)
            wait = bucket.wait_secs()
