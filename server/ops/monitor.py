"""The periodic operational checks behind the gauges an operator alerts on.

Owns two things:

* :class:`ChannelActivity` — remembers that Instagram called us for a channel: it writes
  ``channels.last_webhook_at`` (``$max``, so processes and redeliveries never move it
  back) at most once per ``write_every_secs`` per channel per process. One small write a
  minute per busy channel instead of one per webhook, and the answer to "is Instagram
  still calling us?" survives restarts and is the same from every process.
* :class:`OpsMonitor` — a background service (``core.services``) that every
  ``IGSYNC_MONITOR_INTERVAL_SECS`` refreshes: readiness (``igsync_ready``,
  ``igsync_store_up``), connected and silent channels (``igsync_channels_connected``,
  ``igsync_channels_silent{threshold}``) and suspected stored duplicates
  (``igsync_duplicates_stored``). Every process computes the same values from MongoDB;
  dashboards and alerts take ``max()`` across instances.

A run costs the same however much was stored in the last hour: the duplicates check
(:class:`DuplicateTally`) reads only the messages stored since its previous run (plus one dedup
window of overlap) and remembers what it found for the hour; only a process's first run reads
the whole hour. The silence check reads the connected channels' timestamps, not messages.

Why a gauge of silent channels and not a per-channel "last webhook" timestamp: a label
per channel is unbounded. Which channels are silent is one MongoDB query away
(docs/operations.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pymongo
from bson import ObjectId
from pymongo.errors import PyMongoError

from models.errors import LONG_OPERATION_SECS
from models.store import Store
from models.timeutil import from_epoch_ms, utcnow
from server.ops.loops import cancelling
from server.ops.metrics import SILENCE_THRESHOLDS_SECS, Metrics

log = logging.getLogger("igsync.monitor")

# How far back the stored-duplicates audit looks: long enough that one event keeps the
# gauge (and its alert) up for a while, short enough that the scan stays small.
DUPLICATES_LOOKBACK_SECS = 3600


class ChannelActivity:
    def __init__(self, store: Store, metrics: Metrics, *, write_every_secs: float = 60.0) -> None:
        self.store = store
        self.metrics = metrics
        self.write_every_secs = write_every_secs
        self._written: dict[ObjectId, float] = {}

    async def seen(self, channel_id: ObjectId, received_at: float) -> None:
        """A webhook item for ``channel_id`` arrived at ``received_at`` (epoch seconds).

        Never fails the webhook: the message matters more than the activity mark, and a
        failed write is retried by the next item.
        """
        now = time.monotonic()
        last = self._written.get(channel_id)
        if last is not None and now - last < self.write_every_secs:
            return
        # Taken before the write: every webhook that arrives while it is in flight would
        # otherwise write too — a burst of identical updates of one document each minute.
        self._written[channel_id] = now
        try:
            await self.store.channels.touch_last_webhook(channel_id, from_epoch_ms(received_at * 1000))
        except PyMongoError as exc:
            # Not written: the next item tries again.
            if last is None:
                self._written.pop(channel_id, None)
            else:
                self._written[channel_id] = last
            self.metrics.store_errors.labels(store="mongo").inc()
            log.warning("could not record webhook activity (%s)", type(exc).__name__, extra={"event": "store_error"})


class Readiness:
    """Whether each store answers now: ``/readyz``, ``igsync_ready`` and ``igsync_store_up``."""

    def __init__(self, store: Store, redis: Any, metrics: Metrics, *, timeout_secs: float = 2.0) -> None:
        self.store = store
        self.redis = redis
        self.metrics = metrics
        self.timeout_secs = timeout_secs

    async def check(self) -> dict[str, bool]:
        """Ping MongoDB and Redis at once, each within the deadline; a failure or a store slower
        than the deadline counts as a store error and reads False."""
        mongo, redis = await asyncio.gather(
            self._answers("mongo", self.store.ping()), self._answers("redis", self.redis.ping())
        )
        status = {"mongo": mongo, "redis": redis}
        self.metrics.set_readiness(status)
        return status

    async def _answers(self, store: str, ping: Awaitable[Any]) -> bool:
        try:
            return bool(await asyncio.wait_for(ping, self.timeout_secs))
        except Exception:
            self.metrics.store_errors.labels(store=store).inc()
            return False


# Messages stored this recently may still be in flight (created_at is set before the insert):
# a run reads up to this far behind its clock, so the next run does not skip them.
SETTLE_SECS = 10.0
# How long stop() lets a run in progress finish (store operations are bounded well below it).
STOP_WAIT_SECS = 15.0


class DuplicateTally:
    """Suspected stored duplicates of the last ``lookback_secs``, counted incrementally.

    Each run reads the messages created in [previous end − window, now − settle) and keeps the
    groups whose latest copy is new since the previous end; groups older than the lookback are
    forgotten. So each message is read about once (twice within a window's overlap), and the
    count equals what one aggregation over the whole hour would say."""

    def __init__(self, *, lookback_secs: float, window_secs: int, settle_secs: float = SETTLE_SECS) -> None:
        self.lookback = dt.timedelta(seconds=lookback_secs)
        self.window_secs = window_secs
        self.settle = dt.timedelta(seconds=settle_secs)
        self.found: dict[str, dt.datetime] = {}
        self.checked_until: dt.datetime | None = None

    async def refresh(self, store: Store, now: dt.datetime) -> int:
        """Read what is new since the previous run; the count of the lookback."""
        until = now - self.settle
        oldest = now - self.lookback
        if self.checked_until is None:
            since, last_from = oldest, oldest
        else:
            since, last_from = self.checked_until - dt.timedelta(seconds=self.window_secs), self.checked_until
        if until > last_from:
            # The first run reads the whole hour: background work, bound like other long work.
            # A ping with the ordinary bound first: a store that is down fails it fast. Under the
            # long bound, PyMongo's server selection would wait 120 s, and a cancellation landing
            # then is swallowed by Python 3.11's wait_for inside it — stop() would wait it out.
            await store.ping()
            with pymongo.timeout(LONG_OPERATION_SECS):
                found = await store.messages.suspected_duplicates(since, until, last_from, self.window_secs)
            for key, last in found:
                self.found[key] = max(last, self.found.get(key, last))
            self.checked_until = until
        self.found = {key: last for key, last in self.found.items() if last >= oldest}
        return len(self.found)


class OpsMonitor:
    def __init__(
        self,
        store: Store,
        metrics: Metrics,
        ready: Callable[[], Awaitable[dict[str, bool]]],
        *,
        interval_secs: float,
        dedup_window_secs: int,
        duplicates_lookback_secs: int = DUPLICATES_LOOKBACK_SECS,
    ) -> None:
        self.store = store
        self.metrics = metrics
        self.ready = ready
        self.interval_secs = interval_secs
        self.duplicates = DuplicateTally(lookback_secs=duplicates_lookback_secs, window_secs=dedup_window_secs)
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._stopped = asyncio.Event()

    async def refresh(self, now: dt.datetime | None = None) -> bool:
        """Run every check once; ``True`` when all of them could be computed."""
        now = now or utcnow()
        checks = await self.ready()  # sets igsync_ready / igsync_store_up itself
        ok = bool(checks.get("mongo"))
        if ok:
            try:
                await self._refresh_channels(now)
                await self._refresh_duplicates(now)
            except PyMongoError as exc:
                ok = False
                self.metrics.store_errors.labels(store="mongo").inc()
                log.warning("periodic checks failed (%s)", type(exc).__name__, extra={"event": "store_error"})
        self.metrics.monitor_runs.labels(result="ok" if ok else "failed").inc()
        return ok

    async def _refresh_channels(self, now: dt.datetime) -> None:
        heard_from = await self.store.channels.heard_from()
        self.metrics.channels_connected.set(len(heard_from))
        for label, secs in SILENCE_THRESHOLDS_SECS.items():
            cutoff = now - dt.timedelta(seconds=secs)
            silent = sum(1 for at in heard_from if at is None or at < cutoff)
            self.metrics.channels_silent.labels(threshold=label).set(silent)

    async def _refresh_duplicates(self, now: dt.datetime) -> None:
        self.metrics.duplicates_stored.set(await self.duplicates.refresh(self.store, now))

    async def _loop(self) -> None:
        while not self._stopping and not cancelling():
            try:
                await self.refresh()
            except Exception:
                # A bug here must not stop the checks for good; the counter shows it.
                self.metrics.monitor_runs.labels(result="failed").inc()
                log.exception("periodic checks crashed")
            if self._stopping:
                return
            # The interval paces a background check; stop() ends the wait early.
            try:
                async with asyncio.timeout(self.interval_secs):
                    await self._stopped.wait()
            except TimeoutError:
                pass

    async def start(self) -> None:
        """Start the periodic checks."""
        if self._task is None:
            self._stopping = False
            self._stopped = asyncio.Event()
            self._task = asyncio.create_task(self._loop(), name="igsync-ops-monitor")

    async def stop(self) -> None:
        """Stop the periodic checks."""
        task, self._task = self._task, None
        if task is None:
            return
        # Asked, not cancelled: a cancellation that lands in PyMongo's server selection can
        # leave its topology lock held, and the client's close() then waits forever. The run
        # in progress ends within the store's timeout; past the wait it is cancelled anyway.
        self._stopping = True
        self._stopped.set()
        _, busy = await asyncio.wait({task}, timeout=STOP_WAIT_SECS)
        for late in busy:
            late.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await late
