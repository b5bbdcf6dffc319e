"""The hub's Redis pub/sub connection and the circuit breaker of its publish path.

One connection per process (:class:`PubSubLink`), subscribed to the live channel of each
channel that has a local subscriber plus a control channel that keeps it up; its reader loop
reconnects with backoff and tells the hub (``on_connected``) so routes catch up from the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis

from server.ops.loops import cancelling
from server.ops.metrics import Metrics
from server.realtime.eventlog import (
    CONTROL_CHANNEL,
    live_channel,
)

log = logging.getLogger("igsync.realtime")

RECONNECT_MIN_SECS = 0.1
RECONNECT_MAX_SECS = 5.0
# The reader wakes this often even when idle, so redis-py's health-check PING goes out.
READ_POLL_SECS = 1.0
SUBSCRIBE_TIMEOUT_SECS = 2.0
BREAKER_MIN_SECS = 0.5
BREAKER_MAX_SECS = 5.0


class LinkDown(Exception):
    """The pub/sub connection is not up; the caller degrades instead of waiting."""


class CircuitBreaker:
    """After a Redis failure on the publish path, skip Redis for a while (doubling, capped)."""

    def __init__(self, min_secs: float = BREAKER_MIN_SECS, max_secs: float = BREAKER_MAX_SECS) -> None:
        self.min_secs = min_secs
        self.max_secs = max_secs
        self.cooldown = min_secs
        self.open_until = 0.0

    def allows(self) -> bool:
        """Whether a call may go out now."""
        return time.monotonic() >= self.open_until

    def failure(self) -> None:
        """A call failed: stay open twice as long as last time (up to the maximum)."""
        self.open_until = time.monotonic() + self.cooldown
        self.cooldown = min(self.cooldown * 2, self.max_secs)

    def reset(self) -> None:
        """A call succeeded: close again."""
        self.cooldown = self.min_secs
        self.open_until = 0.0


class PubSubLink:
    """One pub/sub connection with a self-healing reader loop."""

    def __init__(
        self,
        redis: aioredis.Redis,
        *,
        on_message: Callable[[bytes, bytes], None],
        on_connected: Callable[[bool], Awaitable[None]],
        metrics: Metrics,
    ) -> None:
        self.redis = redis
        self.on_message = on_message
        self.on_connected = on_connected
        self.metrics = metrics
        self.connected = False
        # Set while connected; a link that has never been up yet is worth a short wait.
        self.up = asyncio.Event()
        self.ever_connected = False
        self._pubsub: Any = None
        self._pending: dict[bytes, deque[asyncio.Future[None]]] = {}
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._background: set[asyncio.Task[Any]] = set()

    def start(self) -> None:
        """Start the reader loop."""
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Stop the reader loop and its background work."""
        self._stopping = True
        for task in [self._task, *self._background]:
            if task is not None:
                task.cancel()
        for task in [self._task, *self._background]:
            if task is not None:
                with contextlib.suppress(BaseException):
                    await task

    def spawn(self, work: Awaitable[Any]) -> None:
        """Run ``work`` in the background, kept until it ends."""
        task = asyncio.ensure_future(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _run(self) -> None:
        delay = RECONNECT_MIN_SECS
        failed_before = False
        while not self._stopping and not cancelling():
            pubsub = self.redis.pubsub()
            try:
                await pubsub.subscribe(CONTROL_CHANNEL)
                self._pubsub = pubsub
                while not self._stopping and not cancelling():
                    message = await pubsub.get_message(timeout=READ_POLL_SECS)
                    if message is None:
                        continue
                    kind = message["type"]
                    if kind == "message":
                        self.on_message(message["channel"], message["data"])
                    elif kind == "subscribe":
                        if message["channel"] == CONTROL_CHANNEL:
                            self.connected = True
                            self.ever_connected = True
                            self.up.set()
                            delay = RECONNECT_MIN_SECS
                            if failed_before:
                                self.metrics.pubsub_reconnects.inc()
                                log.info("Redis pub/sub reconnected; catching up the subscribed channels")
                            self.spawn(self.on_connected(failed_before))
                        else:
                            self._confirm(message["channel"])
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not self._stopping:
                    log.warning("Redis pub/sub connection lost (%s); reconnecting", type(exc).__name__)
                    self.metrics.store_errors.labels(store="redis").inc()
            finally:
                self.connected = False
                self.up.clear()
                self._pubsub = None
                self._fail_pending()
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
            if self._stopping:
                break
            failed_before = True
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, RECONNECT_MAX_SECS)

    def _confirm(self, name: bytes) -> None:
        waiters = self._pending.get(name)
        if waiters:
            future = waiters.popleft()
            if not waiters:
                del self._pending[name]
            if not future.done():
                future.set_result(None)

    def _fail_pending(self) -> None:
        pending, self._pending = self._pending, {}
        for waiters in pending.values():
            for future in waiters:
                if not future.done():
                    future.set_exception(LinkDown("pub/sub connection lost"))
                    future.exception()  # retrieved: nobody may be waiting any more

    async def wait_first_connection(self, timeout: float) -> bool:
        """Just after start the connection may still be on its way: wait for it (bounded).
        Once it has been up, a down link fails at once (the caller degrades)."""
        if not self.ever_connected and not self._stopping:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.up.wait(), timeout)
        return self.connected

    async def subscribe(self, channel_id: str) -> None:
        """Subscribe to the channel's live events; returns once Redis has confirmed it."""
        await self.wait_first_connection(SUBSCRIBE_TIMEOUT_SECS)
        pubsub = self._pubsub
        if not self.connected or pubsub is None:
            raise LinkDown("pub/sub connection is down")
        name = live_channel(channel_id)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        # Redis confirms SUBSCRIBEs in the order they were sent: one FIFO of waiters per name.
        self._pending.setdefault(name, deque()).append(future)
        await pubsub.subscribe(name)
        await asyncio.wait_for(asyncio.shield(future), SUBSCRIBE_TIMEOUT_SECS)

    async def unsubscribe(self, channel_id: str) -> None:
        """Stop receiving a channel's live events."""
        pubsub = self._pubsub
        if self.connected and pubsub is not None:
            with contextlib.suppress(Exception):
                await pubsub.unsubscribe(live_channel(channel_id))
