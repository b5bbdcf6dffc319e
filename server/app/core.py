"""The wiring of the core: every client and long-lived object of a process, built in one place.

:func:`build_core` runs inside the event loop (PyMongo's async client and redis.asyncio
bind to the loop they first run on), creates each object once and injects it into the
objects that need it. Nothing else in the project creates a client or keeps global state;
tests build as many independent cores as they need.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from tornado.httpclient import AsyncHTTPClient

from config import Settings
from models.store import Store
from server.api.auth import Authenticator
from server.dedup.echo import EchoDedup, EchoPairing, SentMarks
from server.dedup.marksent import MarkSentService
from server.graph.client import GraphApiClient
from server.graph.profiles import ProfileService
from server.inbox.events import EventSink
from server.inbox.service import InboxService
from server.inbox.threads import ChannelCache, ThreadResolver
from server.ingest.changes import MessageArrivalHook, MessageEventHandler
from server.ingest.pipeline import IngestPipeline
from server.ingest.recorder import MessageRecorder
from server.media.links import LinkRefresher
from server.media.service import Downloader, MediaService, Transcriber, load_transcriber
from server.ops.metrics import Metrics
from server.ops.monitor import ChannelActivity, OpsMonitor
from server.ops.store_metrics import InstrumentedRedis, MongoCommandMetrics
from server.realtime.hub import EventHub
from server.triggers.delivery import CachingResolver, TriggerDispatcher
from server.triggers.outbox import TriggerAdmin, TriggerOutbox

log = logging.getLogger("igsync.core")


def redis_client(
    url: str, *, timeout_ms: int, retries: int | None = None, metrics: Metrics | None = None
) -> aioredis.Redis:
    """The one way the project builds a Redis client: short timeouts, since Redis is an
    accelerator (dedup hints, fan-out) and a slow Redis must not stall a webhook.

    ``retries``: that many immediate retries on connection errors and timeouts — for paths
    that have their own fallback. Without it, one immediate retry on a *connection* error
    only: a client built by ``from_url`` otherwise has no retry at all, so after a Redis
    restart or failover the first command on every pooled connection failed ("Connection
    closed by server") although Redis was back. Timeouts are not retried (a hung Redis must
    cost one timeout, not two). With ``metrics``, every command's latency and failures are
    measured."""
    timeout = timeout_ms / 1000
    retry = (
        Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,))
        if retries is None
        else Retry(NoBackoff(), retries)
    )
    extra: dict[str, Any] = {"retry": retry}
    client = InstrumentedRedis.from_url(
        url,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        health_check_interval=15,
        decode_responses=False,
        **extra,
    )
    client.redis_metrics = metrics
    return client


@dataclass
class Core:
    settings: Settings
    store: Store
    redis: aioredis.Redis
    metrics: Metrics
    channels: ChannelCache
    threads: ThreadResolver
    recorder: MessageRecorder
    pipeline: IngestPipeline
    auth: Authenticator
    inbox: InboxService
    sink: EventSink
    # Workflow triggers: dead letters and retries (the dispatcher is one of the services).
    triggers: TriggerAdmin
    # The WebSocket hub when this core publishes to it (the default); None with another sink.
    realtime: EventHub | None = None
    # Echo dedup (webhook side) and mark-sent (sender side): server/dedup/echo.py, server/dedup/marksent.py.
    dedup: EchoDedup | None = None
    marksent: MarkSentService | None = None
    # Background services with start()/stop() (realtime hub, workers); started by serve.
    services: list[Any] = field(default_factory=list)
    # Events and media (issue 7): GET /media, the media worker, profile look-ups.
    media: MediaService | None = None
    profiles: ProfileService | None = None
    message_events: MessageEventHandler | None = None
    # The periodic checks behind igsync_ready / igsync_channels_silent / igsync_duplicates_stored.
    monitor: OpsMonitor | None = None

    async def ready(self) -> dict[str, bool]:
        """Whether each store answers now (``/readyz``); also sets ``igsync_ready``."""
        status = {"mongo": False, "redis": False}
        try:
            status["mongo"] = await self.store.ping()
        except Exception:
            self.metrics.store_errors.labels(store="mongo").inc()
        try:
            status["redis"] = bool(await self.redis.ping())
        except Exception:
            self.metrics.store_errors.labels(store="redis").inc()
        self.metrics.set_readiness(status)
        return status

    async def start(self) -> None:
        for service in self.services:
            await service.start()

    async def close(self) -> None:
        for service in reversed(self.services):
            try:
                await service.stop()
            except Exception:
                log.exception("stopping %s failed", type(service).__name__)
        await self.redis.aclose()
        await self.store.close()


async def build_core(
    settings: Settings,
    *,
    metrics: Metrics | None = None,
    sink: EventSink | None = None,
    ensure_indexes: bool = True,
    mongo_listeners: list[Any] | None = None,
    transcriber: Transcriber | None = None,
) -> Core:
    if not settings.mongo_url or not settings.redis_url:
        raise ValueError("build_core needs store URLs; embedded stores are started by the CLI")
    metrics = metrics or Metrics()
    store = Store(
        settings.mongo_url,
        settings.mongo_db,
        timeout_ms=settings.store_timeout_ms,
        webhook_events_ttl_days=settings.webhook_events_ttl_days,
        trigger_jobs_ttl_days=settings.trigger_jobs_ttl_days,
        orphan_events_ttl_days=settings.orphan_events_ttl_days,
        listeners=[MongoCommandMetrics(metrics), *(mongo_listeners or [])],
    )
    if ensure_indexes:
        await store.ensure_indexes()
    redis = redis_client(settings.redis_url, timeout_ms=settings.store_timeout_ms, metrics=metrics)
    channels = ChannelCache(store, ttl_secs=settings.channel_cache_secs)
    threads = ThreadResolver(store)
    inbox = InboxService(store, channels)
    realtime = None
    if sink is None:
        # The hub has its own clients: the publish path gets one immediate retry and a short
        # timeout (its breaker takes over), the pub/sub reader none (its loop reconnects).
        realtime = EventHub(
            settings=settings,
            publish_redis=redis_client(
                settings.redis_url, timeout_ms=settings.realtime_redis_timeout_ms, retries=1, metrics=metrics
            ),
            pubsub_redis=redis_client(
                settings.redis_url, timeout_ms=settings.store_timeout_ms, retries=0, metrics=metrics
            ),
            metrics=metrics,
            inbox=inbox,
        )
        sink = realtime
    # Trigger deliveries are the only outgoing HTTP of the dispatcher: one client, one
    # connection slot per lane delivered at once.
    dispatcher = TriggerDispatcher(
        settings=settings,
        store=store,
        redis=redis,
        http=AsyncHTTPClient(
            force_instance=True, max_clients=max(1, settings.trigger_workers), resolver=CachingResolver()
        ),
        metrics=metrics,
    )
    outbox = TriggerOutbox(store, channel_cache_secs=settings.channel_cache_secs, on_recorded=dispatcher.wake)
    recorder = MessageRecorder(store, sink, before_hooks=[outbox])
    inbox.publish = recorder.publish
    media = MediaService(
        store,
        recorder.publish,
        metrics,
        downloader=Downloader(
            max_bytes=settings.media_max_bytes,
            timeout_secs=settings.media_timeout_secs,
            max_clients=max(settings.media_concurrency, 1),
        ),
        transcriber=transcriber or load_transcriber(settings.transcriber),
        concurrency=settings.media_concurrency,
        lease_secs=settings.media_lease_secs,
        max_attempts=settings.media_max_attempts,
        retry_base_secs=settings.media_retry_base_secs,
        poll_secs=settings.media_poll_secs,
        transcribe_timeout_secs=settings.media_timeout_secs,
        links=LinkRefresher(
            store,
            GraphApiClient(
                settings.graph_api_url,
                settings.graph_api_version,
                timeout_secs=settings.graph_api_timeout_secs,
                max_clients=max(settings.media_concurrency, 1),
            ),
            metrics,
        ),
    )
    message_events = MessageEventHandler(store, recorder, metrics, media)
    profiles = ProfileService(
        store,
        GraphApiClient(
            settings.graph_api_url,
            settings.graph_api_version,
            timeout_secs=settings.graph_api_timeout_secs,
            max_clients=settings.profile_concurrency,
        ),
        recorder.publish,
        metrics,
        concurrency=settings.profile_concurrency,
        max_attempts=settings.profile_max_attempts,
        retry_base_secs=settings.profile_retry_base_secs,
        refresh_after_secs=settings.profile_refresh_days * 86400,
        pictures=media,
    )
    # Order matters: earlier events are applied (an unsend clears the attachments) before
    # media jobs are queued.
    recorder.hooks.extend([MessageArrivalHook(store, message_events), media])
    # Dedup hints get their own Redis client with a short timeout (and the default single
    # immediate retry on a connection error, for restarts): a slow or dead Redis is skipped,
    # never waited for (MongoDB decides alone, P4).
    marks = SentMarks(
        redis_client(settings.redis_url, timeout_ms=settings.dedup_redis_timeout_ms, metrics=metrics),
        metrics,
        ttl_secs=settings.dedup_ttl_secs,
    )
    pairing = EchoPairing(store.echo_pairs, window_secs=settings.dedup_window_secs)
    dedup = EchoDedup(store, recorder, pairing, marks, metrics)
    pipeline = IngestPipeline(
        store=store,
        app_secret=settings.app_secret or "",
        channels=channels,
        threads=threads,
        recorder=recorder,
        metrics=metrics,
        item_events=message_events,
        new_customer_hooks=[profiles],
        activity=ChannelActivity(store, metrics),
        owner_messages=dedup,
    )
    # Webhooks first: the dispatcher gives way while this process is handling them.
    dispatcher.webhooks_busy = lambda: pipeline.in_flight > 0
    auth = Authenticator(
        store,
        admin_token=settings.admin_token,
        internal_tokens=settings.internal_tokens,
        metrics_token=settings.metrics_token,
    )
    marksent = MarkSentService(
        store=store,
        auth=auth,
        channels=channels,
        threads=threads,
        recorder=recorder,
        pairing=pairing,
        marks=marks,
        metrics=metrics,
        new_customer_hooks=pipeline.new_customer_hooks,
    )
    core = Core(
        settings=settings,
        store=store,
        redis=redis,
        metrics=metrics,
        channels=channels,
        threads=threads,
        recorder=recorder,
        pipeline=pipeline,
        auth=auth,
        inbox=inbox,
        sink=sink,
        triggers=TriggerAdmin(store, on_requeued=dispatcher.wake),
        realtime=realtime,
        dedup=dedup,
        marksent=marksent,
        # Started in this order, stopped in reverse: the hub outlives the workers that publish;
        # the dedup Redis client closes last.
        services=[marks, *([realtime] if realtime is not None else []), media, profiles, dispatcher],
        media=media,
        profiles=profiles,
        message_events=message_events,
    )
    core.monitor = OpsMonitor(
        store,
        metrics,
        core.ready,
        interval_secs=settings.monitor_interval_secs,
        dedup_window_secs=settings.dedup_window_secs,
    )
    core.services.append(core.monitor)
    return core
