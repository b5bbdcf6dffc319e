"""The trigger dispatcher: a background service that delivers the outbox's jobs.

Owns delivery — the rules of which job may go are in :mod:`server.triggers.outbox`, every query
in :mod:`models.trigger_jobs`:

* **Claiming.** Jobs are delivered per *lane* (one conversation, one target). A process
  delivers a lane's jobs only while it holds the lane's lock, a lease in MongoDB that always
  outlasts the attempt under way (HTTP timeout plus ``trigger_lease_margin_secs``; renewed
  when it would not). So two processes never deliver the same job — or two jobs of one
  conversation — at the same time; a process that dies leaves its lease to run out, and the
  job it was delivering is delivered again (at least once).
* **Order.** Inside a lane, jobs go one at a time in the order of the messages (Instagram's
  time, then arrival). A job that must wait for a retry holds back the jobs queued behind
  it, until it is delivered or dead-lettered; other lanes keep flowing: up to
  ``trigger_workers`` lanes are delivered at once per process.
* **Durability.** Nothing lives only in memory: a restarted process finds pending jobs with
  its first poll. The poll runs every ``trigger_poll_secs``, sooner when this process
  recorded a job, but never twice within ``MIN_POLL_GAP_SECS``.
* **Economy.** The lanes started by one poll share their store commands (:class:`Coalesced`),
  so under load a delivery costs well under one MongoDB command — the webhooks, which share
  the store, keep their throughput.
* **Sending.** HTTP with Tornado's ``AsyncHTTPClient`` (signed, timeout, retried with
  exponential backoff and jitter on network errors, timeouts, 5xx and 429 — honouring
  ``Retry-After`` — never on other 4xx), or ``XADD`` to the Redis Stream, trimmed to about
  ``trigger_stream_maxlen`` entries.
* **Metrics.** Attempts and outcomes as they happen; pending count, dead letters and the age
  of the oldest undelivered job refreshed with each poll.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import math
import os
import random
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson
import redis.asyncio as aioredis
from bson import ObjectId
from pymongo.errors import PyMongoError
from redis.exceptions import RedisError
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest
from tornado.iostream import StreamClosedError
from tornado.netutil import DefaultLoopResolver, Resolver
from tornado.simple_httpclient import HTTPTimeoutError

from config import Settings
from models.cache import TtlLru
from models.group_commit import NaturalBatcher
from models.store import Store
from models.timeutil import utcnow
from models.trigger_jobs import STATE_DEAD, STATE_PENDING, TARGET_HTTP
from server.ops.loops import cancelling, wait_for_wake
from server.ops.metrics import Metrics
from server.triggers import protocol
from server.triggers.outbox import CHANNELS_CACHED, channel_targets

log = logging.getLogger("igsync.triggers")

K = TypeVar("K")
V = TypeVar("V")

# Jobs one lane delivers per hold of its lock before it lets the poll rotate lanes, and
# how many of them are read at once.
LANE_BURST = 50
LANE_BATCH = 10
# Polls are at least this far apart, also when woken: under load a poll then finds the jobs
# of many webhooks at once, and the lanes it starts share their store commands (see
# Coalesced) — a tenth of a second of trigger latency buys most of the dispatcher's economy.
MIN_POLL_GAP_SECS = 0.1
# On shutdown an attempt in flight may finish within this; then it is cancelled (its job
# stays pending and is delivered again after the restart).
STOP_GRACE_SECS = 5.0
# Lanes found locked by another process are left out of this process's polls for a while —
# long enough that the poll sees past them to other lanes (their holder, or whoever polls
# when it lets go, delivers them meanwhile), short enough to help soon if the holder died.
BUSY_LANE_SKIP_SECS = 2.0
MAX_REMEMBERED_BUSY_LANES = 1000
# Marked messages turned into jobs per poll (one find, one insert_many, one update_many);
# fewer while webhooks are being handled. Bounded also when idle: the embedded store writes
# one document at a time, and a webhook arriving meanwhile waits for the whole batch.
MATERIALIZE_BATCH = 250
BUSY_MATERIALIZE_BATCH = 16
# The gauges (pending, dead, oldest) are counted at most this often: scrapes come every
# 15–30 s, and counting a long backlog is not free.
GAUGE_INTERVAL_SECS = 5.0
BUSY_GAUGE_INTERVAL_SECS = 30.0
# A poll reads this many due jobs per free worker: a lane with a backlog has several.
POLL_ROWS_PER_WORKER = 8
# The schema's default; a channel stored without one (by hand) gets it too.
DEFAULT_HTTP_TIMEOUT_SECS = 10.0
# A receiver's answer body is kept (truncated) in the dead letter to tell why it refused.
ERROR_DETAIL_CHARS = 300


class Coalesced(NaturalBatcher[K, V | None]):
    """Concurrent single-key calls that share one batched store command.

    The first caller sends its key at once; callers arriving while that command is in flight
    queue up and go together in the next one ("natural batching", the queue of
    :class:`models.group_commit.NaturalBatcher`): no timer, no added latency when idle.
    ``run`` maps a list of keys to their values; a key it leaves out gets None. If the
    command fails, every caller of that batch gets the exception.
    """

    def __init__(self, run: Callable[[list[K]], Awaitable[Mapping[K, V]]], *, max_batch: int = 100) -> None:
        super().__init__(max_batch=max_batch)
        self.run = run

    async def __call__(self, key: K) -> V | None:
        """The result for ``key``, shared by concurrent callers of one batch."""
        return await self._submit(key)

    async def _send(self, batch: list[tuple[K, asyncio.Future[V | None]]]) -> None:
        values = await self.run(list(dict.fromkeys(key for key, _ in batch)))
        for key, future in batch:
            if not future.done():
                future.set_result(values.get(key))


# Receiver hosts one process remembers: a handful in practice; the bound is for a flood.
RESOLVED_HOSTS = 1024


class CachingResolver(Resolver):
    """Host name → addresses, remembered for a minute.

    Tornado's default resolver hands every connection's ``getaddrinfo`` to a thread; trigger
    receivers are a handful of hosts called thousands of times, so one lookup per host and
    minute is plenty and saves a thread hop per delivery.
    """

    def initialize(self, ttl_secs: float = 60.0) -> None:  # type: ignore[override]
        """Set up the cache over the default resolver."""
        self.ttl_secs = ttl_secs
        self.resolver = DefaultLoopResolver()
        self._cache: TtlLru[tuple[str, int, int], list[tuple[int, Any]]] = TtlLru(RESOLVED_HOSTS, ttl_secs)

    async def resolve(self, host: str, port: int, family: int = socket.AF_UNSPEC) -> list[tuple[int, Any]]:
        """The addresses of ``host``, cached for ``ttl_secs``."""
        key = (host, port, int(family))
        hit, addresses = self._cache.lookup(key)
        if hit and addresses is not None:
            return addresses
        addresses = await self.resolver.resolve(host, port, family)
        self._cache.put(key, addresses)
        return addresses

    def close(self) -> None:
        """Close the inner resolver."""
        self.resolver.close()


@dataclass
class AttemptResult:
    ok: bool
    result: str  # igsync_trigger_attempts_total{result}
    retryable: bool = False
    status: int | None = None
    retry_after_secs: float | None = None
    detail: str | None = None


def _classify_http(status: int) -> tuple[bool, str, bool]:
    """(ok, result, retryable) of an HTTP answer."""
    if 200 <= status < 300:
        return True, "ok", False
    if status == 429:
        return False, "rate_limited", True
    if status >= 500:
        return False, "server_error", True
    # Other 4xx — and 3xx, since redirects are not followed: the receiver refuses this
    # request (or the URL is wrong); sending it again cannot help. Fix, then `igsync triggers retry`.
    return False, "client_error", False


class TriggerDispatcher:
    """A service (``start``/``stop``) of the core: polls for due lanes and delivers them."""

    def __init__(
        self,
        *,
        settings: Settings,
        store: Store,
        redis: aioredis.Redis,
        http: AsyncHTTPClient,
        metrics: Metrics,
        webhooks_busy: Callable[[], bool] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.settings = settings
        # Whether this process is handling webhooks right now: they come first (see _run).
        self.webhooks_busy = webhooks_busy or (lambda: False)
        self.store = store
        self.jobs = store.trigger_jobs
        self.lanes = store.trigger_lanes
        self.redis = redis
        self.http = http
        self.metrics = metrics
        self.rng = rng or random.Random()
        # Unique per process life: a restarted process does not inherit its predecessor's leases.
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._wake = asyncio.Event()
        self._active: dict[str, asyncio.Task[None]] = {}
        self._busy_elsewhere: dict[str, float] = {}
        self._channels: TtlLru[ObjectId, dict[str, Any] | None] = TtlLru(CHANNELS_CACHED, settings.channel_cache_secs)
        # Concurrent lanes share their store commands (natural batching, no timer).
        self._heads = Coalesced(lambda lanes: self.jobs.heads(lanes, per_lane=LANE_BATCH))
        self._messages = Coalesced(self.store.messages.get_many)
        self._conversations = Coalesced(self.store.conversations.get_many)
        self._delivered = Coalesced(self._mark_delivered)
        self._release = Coalesced(self._release_lanes)
        self._loop_task: asyncio.Task[None] | None = None
        self._stopping = False

    # -- life --------------------------------------------------------------------------

    def wake(self) -> None:
        """A job was recorded (or requeued) here: poll now instead of at the next tick."""
        self._wake.set()

    async def start(self) -> None:
        """Start the dispatcher loop (unless this process has no trigger workers)."""
        if self.settings.trigger_workers == 0:
            log.info("trigger dispatcher off in this process (IGSYNC_TRIGGER_WORKERS=0)")
            return
        self._stopping = False
        self._loop_task = asyncio.create_task(self._run(), name="trigger-dispatcher")

    async def stop(self) -> None:
        """Stop the dispatcher and let deliveries in flight finish."""
        self._stopping = True
        self._wake.set()
        if self._loop_task is not None:
            await asyncio.gather(self._loop_task, return_exceptions=True)
            self._loop_task = None
        lanes = list(self._active.values())
        if lanes:
            _, unfinished = await asyncio.wait(lanes, timeout=STOP_GRACE_SECS)
            for task in unfinished:
                task.cancel()
            await asyncio.gather(*lanes, return_exceptions=True)
        self.http.close()

    # -- the poll loop -----------------------------------------------------------------

    async def _run(self) -> None:
        """Poll and start lanes — giving way to webhooks.

        While this process is handling webhooks, new lanes start at most every
        ``trigger_max_defer_secs``, an eighth of them, each for one batch: the webhook never
        waits for trigger work, and under a sustained burst deliveries go on at a reduced
        pace and catch up when it ends (the lag shows in
        ``igsync_trigger_oldest_pending_seconds``). Between requests — almost always, at
        real traffic — they start at once.
        """
        last_gauges = 0.0
        last_fill = -math.inf
        while not self._stopping and not cancelling():
            self._wake.clear()
            deferred = self.webhooks_busy() and time.monotonic() - last_fill < self.settings.trigger_max_defer_secs
            if deferred:
                self.metrics.trigger_deferred_polls.inc()
            try:
                gauge_interval = min(GAUGE_INTERVAL_SECS, 10 * self.settings.trigger_poll_secs)
                if self.webhooks_busy():
                    gauge_interval = BUSY_GAUGE_INTERVAL_SECS  # counting a backlog competes with webhooks
                if time.monotonic() - last_gauges >= gauge_interval:
                    last_gauges = time.monotonic()
                    await self.refresh_gauges()
                if not deferred:
                    last_fill = time.monotonic()
                    await self._fill()
            except PyMongoError as exc:
                self.metrics.store_errors.labels(store="mongo").inc()
                log.warning("trigger dispatcher: MongoDB failed (%s); retrying at the next poll", type(exc).__name__)
            except Exception:
                log.exception("trigger dispatcher poll failed")
            await asyncio.sleep(MIN_POLL_GAP_SECS)
            if self._stopping:
                break
            if deferred:
                continue  # look again as soon as the webhooks let go
            await wait_for_wake(self._wake, self.settings.trigger_poll_secs)

    async def _fill(self) -> None:
        # Marked messages become jobs first, then due lanes start. While webhooks are being
        # handled, both in small portions: on a store that writes one document at a time, a
        # batch of hundreds holds every webhook's write back for a fifth of a second.
        busy = self.webhooks_busy()
        await self.jobs.materialize(limit=BUSY_MATERIALIZE_BATCH if busy else MATERIALIZE_BATCH)
        free = self.settings.trigger_workers - len(self._active)
        if busy:
            free = min(free, max(1, self.settings.trigger_workers // 8))
        if free <= 0:
            return
        now_mono = time.monotonic()
        self._busy_elsewhere = {lane: t for lane, t in self._busy_elsewhere.items() if t > now_mono}
        exclude = list(self._active) + list(self._busy_elsewhere)
        lanes = await self.jobs.due_lanes(utcnow(), exclude=exclude, limit=free * POLL_ROWS_PER_WORKER)
        for lane in lanes[:free]:
            self._active[lane] = asyncio.create_task(self._lane(lane), name=f"trigger-lane-{lane}")

    async def refresh_gauges(self) -> None:
        """Read everything first, then set the three gauges together (one consistent scrape)."""
        times = [
            t for t in (await self.jobs.oldest_pending_created_at(), await self.jobs.oldest_marked_created_at()) if t
        ]
        pending = await self.jobs.count(STATE_PENDING) + await self.jobs.count_marked()
        dead = await self.jobs.count(STATE_DEAD)
        self.metrics.trigger_oldest_pending.set(max(0.0, (utcnow() - min(times)).total_seconds()) if times else 0.0)
        self.metrics.trigger_pending.set(pending)
        self.metrics.trigger_dead_letters.set(dead)

    # -- one lane ----------------------------------------------------------------------

    def _lease_until(self, timeout_secs: float) -> dt.datetime:
        return utcnow() + dt.timedelta(seconds=timeout_secs + self.settings.trigger_lease_margin_secs)

    async def _lane(self, lane: str) -> None:
        try:
            lease = self._lease_until(0)
            if not await self.lanes.acquire_lane(lane, self.owner, lease):
                if len(self._busy_elsewhere) < MAX_REMEMBERED_BUSY_LANES:
                    self._busy_elsewhere[lane] = time.monotonic() + BUSY_LANE_SKIP_SECS
                return
            try:
                await self._deliver_lane(lane, lease)
            finally:
                await self._release(lane)
        except PyMongoError as exc:
            self.metrics.store_errors.labels(store="mongo").inc()
            log.warning("trigger lane %s: MongoDB failed (%s); it is retried at a later poll", lane, type(exc).__name__)
        except Exception:
            log.exception("trigger lane %s failed", lane)
        finally:
            self._active.pop(lane, None)
            self._wake.set()

    async def _deliver_lane(self, lane: str, lease: dt.datetime) -> None:
        """Deliver the lane's jobs in order while this process holds its lock.

        Reads a few jobs at a time with their messages and the conversation. Every store
        command of a lane is coalesced with the same command of the lanes delivered at the
        same time (see :class:`Coalesced`), so under load a delivery costs a fraction of a
        command instead of the seven a lone lane needs.
        """
        channel: dict[str, Any] | None = None
        done = 0
        # Acknowledged jobs are recorded as delivered together, when the batch is done (and
        # always before the lock is released): the order promise is about acknowledgements,
        # and a crash in between only means an acknowledged job is sent again (at least once).
        acked: list[ObjectId] = []
        try:
            while done < LANE_BURST and not self._stopping:
                batch = await self._heads(lane) or []
                if not batch:
                    return
                if channel is None:
                    channel = await self._channel(batch[0]["channel_id"])
                conversation, *found = await asyncio.gather(
                    self._conversations(batch[0]["conversation_id"]),
                    *(self._messages(j["message_id"]) for j in batch),
                )
                messages = {job["message_id"]: message for job, message in zip(batch, found, strict=True)}
                for job in batch:
                    if self._stopping:
                        return
                    if job["due_at"] > utcnow():
                        # This job waits for a retry: nothing behind it may go first.
                        await self.jobs.hold_back(lane, job["due_at"])
                        return
                    timeout = _http_timeout(channel) if job["target"] == TARGET_HTTP else 0.0
                    # Renew only when the lease would not outlast this attempt with half the
                    # margin to spare: a busy lane renews every few seconds, not per job.
                    needed = utcnow() + dt.timedelta(seconds=timeout + self.settings.trigger_lease_margin_secs / 2)
                    if lease < needed:
                        lease = self._lease_until(timeout)
                        if not await self.lanes.renew_lane(lane, self.owner, lease):
                            log.warning("trigger lane %s: lease lost; leaving it to its new holder", lane)
                            return
                    done += 1
                    if not await self._deliver(job, channel, messages.get(job["message_id"]), conversation, acked):
                        return
                await self._flush(acked)
                if len(batch) < LANE_BATCH or self.webhooks_busy():
                    # The lane had no more (a job recorded meanwhile is found by the next poll),
                    # or webhooks are waiting: the next poll resumes it, at the pace of _run.
                    return
        finally:
            await self._flush(acked)

    async def _flush(self, acked: list[ObjectId]) -> None:
        if acked:
            ids, acked[:] = list(acked), []
            await asyncio.gather(*(self._delivered(job_id) for job_id in ids))

    async def _channel(self, channel_id: ObjectId) -> dict[str, Any] | None:
        """The channel's current trigger settings, trusted for ``channel_cache_secs`` (like the
        outbox's), so a busy channel costs no read per lane."""
        hit, channel = self._channels.lookup(channel_id)
        if hit:
            return channel
        channel = await self.store.channels.get(channel_id)
        self._channels.put(channel_id, channel)
        return channel

    async def _deliver(
        self,
        job: dict[str, Any],
        channel: dict[str, Any] | None,
        message: dict[str, Any] | None,
        conversation: dict[str, Any] | None,
        acked: list[ObjectId],
    ) -> bool:
        """One attempt at ``job``; True when the lane may go on to its next job. An
        acknowledged job is added to ``acked`` for the caller to record."""
        target = job["target"]
        delivery_id = str(job["_id"])
        if target not in channel_targets(channel):
            # Triggers were turned off (or the channel disconnected) after the message came.
            await self.jobs.cancelled(job["_id"], "triggers_off")
            self.metrics.trigger_deliveries.labels(target=target, outcome="cancelled").inc()
            log.info("trigger cancelled: triggers off target=%s delivery_id=%s", target, delivery_id)
            return True
        assert channel is not None
        if message is None or conversation is None:
            await self.jobs.cancelled(job["_id"], "message_missing")
            self.metrics.trigger_deliveries.labels(target=target, outcome="cancelled").inc()
            log.warning("trigger cancelled: message gone target=%s delivery_id=%s", target, delivery_id)
            return True
        body = orjson.dumps(protocol.trigger_payload(delivery_id, channel, conversation, message))
        attempt = int(job.get("attempts") or 0) + 1
        started = time.perf_counter()
        if target == TARGET_HTTP:
            http_config = channel["triggers"]["http"]
            result = await self._send_http(body, http_config, delivery_id, attempt)
            max_attempts = int(http_config.get("max_attempts") or self.settings.trigger_max_attempts)
        else:
            result = await self._send_stream(body, job, delivery_id)
            max_attempts = self.settings.trigger_max_attempts
        duration_ms = round((time.perf_counter() - started) * 1000, 1)
        self.metrics.trigger_attempts.labels(target=target, result=result.result).inc()
        fields = {
            "target": target,
            "delivery_id": delivery_id,
            "conversation": job["conversation_id"],
            "attempt": attempt,
            "result": result.result,
            "status": result.status,
            "duration_ms": duration_ms,
        }
        extra = {
            "event": "trigger",
            "kind": target,
            "conversation_id": str(job["conversation_id"]),
            "message_id": str(job["message_id"]),
            "status": result.status,
            "duration_ms": duration_ms,
        }
        if result.ok:
            acked.append(job["_id"])
            self.metrics.trigger_deliveries.labels(target=target, outcome="delivered").inc()
            self.metrics.trigger_delivery.labels(target=target).observe(
                max(0.0, (utcnow() - job["created_at"]).total_seconds())
            )
            log.info("trigger delivered %s", _kv(fields), extra={**extra, "outcome": "delivered"})
            return True
        await self._flush(acked)
        error = {"result": result.result, "status": result.status, "detail": result.detail, "at": utcnow()}
        if result.retryable and attempt < max_attempts:
            delay = protocol.retry_delay(
                attempt,
                base_secs=self.settings.trigger_retry_base_secs,
                max_secs=self.settings.trigger_retry_max_secs,
                retry_after_secs=result.retry_after_secs,
                rng=self.rng,
            )
            due = utcnow() + dt.timedelta(seconds=delay)
            await self.jobs.retry_later(job["_id"], attempt, due, error)
            await self.jobs.hold_back(job["lane"], due)
            log.warning("trigger will be retried in %.1fs %s", delay, _kv(fields), extra={**extra, "outcome": "retry"})
            return False
        await self.jobs.dead(job["_id"], attempt, error)
        self.metrics.trigger_deliveries.labels(target=target, outcome="dead").inc()
        log.warning("trigger dead-lettered %s", _kv(fields), extra={**extra, "outcome": "dead"})
        return True

    async def _mark_delivered(self, job_ids: list[ObjectId]) -> dict[ObjectId, None]:
        await self.jobs.delivered(job_ids)
        return {}

    async def _release_lanes(self, lanes: list[str]) -> dict[str, None]:
        await self.lanes.release_lanes(lanes, self.owner)
        return {}

    # -- sending -----------------------------------------------------------------------

    async def _send_http(self, body: bytes, config: dict[str, Any], delivery_id: str, attempt: int) -> AttemptResult:
        timeout = float(config.get("timeout_secs") or DEFAULT_HTTP_TIMEOUT_SECS)
        answer = bytearray()

        def keep_head(chunk: bytes) -> None:
            # Only the start of the answer is kept (for the dead letter); the rest is dropped unread.
            if len(answer) < ERROR_DETAIL_CHARS:
                answer.extend(chunk[: ERROR_DETAIL_CHARS - len(answer)])

        request = HTTPRequest(
            config["url"],
            method="POST",
            body=body,
            headers={
                "Content-Type": "application/json",
                "User-Agent": "igsync-triggers/1",
                protocol.SIGNATURE_HEADER: protocol.signature_header(body, config["secret"]),
                protocol.DELIVERY_HEADER: delivery_id,
                protocol.ATTEMPT_HEADER: str(attempt),
                protocol.EVENT_HEADER: protocol.EVENT_CUSTOMER_MESSAGE,
            },
            connect_timeout=timeout,
            request_timeout=timeout,
            follow_redirects=False,
            streaming_callback=keep_head,
        )
        try:
            response = await self.http.fetch(request, raise_error=False)
        except HTTPTimeoutError:
            return AttemptResult(False, "timeout", retryable=True, detail=f"no answer within {timeout:g}s")
        except (HTTPClientError, OSError, StreamClosedError) as exc:
            return AttemptResult(False, "network_error", retryable=True, detail=type(exc).__name__)
        ok, result, retryable = _classify_http(response.code)
        retry_after = None
        if retryable:
            retry_after = protocol.parse_retry_after(response.headers.get("Retry-After"), utcnow())
        detail = None if ok else bytes(answer).decode("utf-8", "replace")
        return AttemptResult(ok, result, retryable, response.code, retry_after, detail)

    async def _send_stream(self, body: bytes, job: dict[str, Any], delivery_id: str) -> AttemptResult:
        fields = {
            "event": protocol.EVENT_CUSTOMER_MESSAGE,
            "delivery_id": delivery_id,
            "channel_id": str(job["channel_id"]),
            "conversation_id": str(job["conversation_id"]),
            "message_id": str(job["message_id"]),
            "payload": body,
        }
        try:
            await self.redis.xadd(
                self.settings.trigger_stream,
                fields,  # type: ignore[arg-type]
                maxlen=self.settings.trigger_stream_maxlen,
                approximate=True,
            )
        except RedisError as exc:
            self.metrics.store_errors.labels(store="redis").inc()
            return AttemptResult(False, "redis_error", retryable=True, detail=type(exc).__name__)
        return AttemptResult(True, "ok")


def _http_timeout(channel: dict[str, Any] | None) -> float:
    config = ((channel or {}).get("triggers") or {}).get("http") or {}
    return float(config.get("timeout_secs") or DEFAULT_HTTP_TIMEOUT_SECS)


def _kv(fields: dict[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in fields.items() if v is not None)
