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
from tornado.httpclient import AsyncHTTPClient

from config import Settings
from models.store import Store
from server.auth import Authenticator
from server.events import EventSink, NullSink
from server.inbox_api import InboxService
from server.ingest import IngestPipeline
from server.metrics import Metrics
from server.recorder import MessageRecorder
from server.threads import ChannelCache, ThreadResolver
from server.trigger_delivery import CachingResolver, TriggerDispatcher
from server.triggers import TriggerAdmin, TriggerOutbox

log = logging.getLogger("igsync.core")


def redis_client(url: str, *, timeout_ms: int) -> aioredis.Redis:
    """The one way the project builds a Redis client: short timeouts, since Redis is an
    accelerator (dedup hints, fan-out) and a slow Redis must not stall a webhook."""
    timeout = timeout_ms / 1000
    return aioredis.from_url(
        url,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        health_check_interval=15,
        decode_responses=False,
    )


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
    # Background services with start()/stop() (realtime hub, workers); started by serve.
    services: list[Any] = field(default_factory=list)

    async def ready(self) -> dict[str, bool]:
        """Whether each store answers now (``/readyz``)."""
        status = {"mongo": False, "redis": False}
        try:
            status["mongo"] = await self.store.ping()
        except Exception:
            self.metrics.store_errors.labels(store="mongo").inc()
        try:
            status["redis"] = bool(await self.redis.ping())
        except Exception:
            self.metrics.store_errors.labels(store="redis").inc()
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
        listeners=mongo_listeners,
    )
    if ensure_indexes:
        await store.ensure_indexes()
    redis = redis_client(settings.redis_url, timeout_ms=settings.store_timeout_ms)
    sink = sink or NullSink()
    channels = ChannelCache(store, ttl_secs=settings.channel_cache_secs)
    threads = ThreadResolver(store)
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
    pipeline = IngestPipeline(
        store=store,
        app_secret=settings.app_secret or "",
        channels=channels,
        threads=threads,
        recorder=recorder,
        metrics=metrics,
    )
    # Webhooks first: the dispatcher gives way while this process is handling them.
    dispatcher.webhooks_busy = lambda: pipeline.in_flight > 0
    auth = Authenticator(
        store,
        admin_token=settings.admin_token,
        internal_tokens=settings.internal_tokens,
        metrics_token=settings.metrics_token,
    )
    inbox = InboxService(store, channels)
    return Core(
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
        services=[dispatcher],
    )
