"""The wiring of the core: every client and long-lived object of a process, built in one place.

:func:`build_core` runs inside the event loop (PyMongo's async client and redis.asyncio
bind to the loop they first run on), creates each object once and injects it into the
objects that need it. Nothing else in the project creates a client or keeps global state;
tests build as many independent cores as they need.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
from tornado.httpclient import AsyncHTTPClient

from config import Settings
from models.store import Store
from server.accounts.gaps import GapWatch
from server.accounts.history import HistoryImporter, ImportedMessages
from server.accounts.runs import HistoryWorker
from server.accounts.service import AccountsService
from server.accounts.tokens import TokenRefresher
from server.api.auth import Authenticator
from server.app.drain import RequestGate
from server.dedup.echo import EchoDedup
from server.dedup.marks import SentMarks
from server.dedup.marksent import MarkSentService
from server.dedup.pairing import EchoPairing
from server.graph.client import GraphApiClient
from server.graph.health import ChannelHealth
from server.graph.profiles import ProfileService
from server.inbox.events import EventSink, SafePublisher
from server.inbox.scope import OwnerScope
from server.inbox.service import InboxService
from server.inbox.threads import ChannelCache, ThreadResolver
from server.ingest.audit import AuditTrail
from server.ingest.changes import MessageArrivalHook, MessageEventHandler
from server.ingest.pipeline import InFlight, IngestPipeline, NewCustomerHook
from server.ingest.recent import RecentlyStored
from server.ingest.recorder import MessageRecorder
from server.media.download import Downloader
from server.media.links import LinkRefresher
from server.media.service import MediaService
from server.media.transcribe import Transcriber, load_transcriber
from server.ops.expiry import ExpirySweeper
from server.ops.metrics import Metrics
from server.ops.monitor import ChannelActivity, OpsMonitor, Readiness
from server.ops.redis_clients import RedisClient, RedisTopology
from server.ops.store_metrics import MongoCommandMetrics
from server.outbound.limiter import SendLimiter
from server.outbound.service import SendService
from server.outbound.worker import SendWorker
from server.realtime.hub import EventHub
from server.triggers.admin import TriggerAdmin
from server.triggers.delivery import CachingResolver, TriggerDispatcher
from server.triggers.outbox import TriggerOutbox

log = logging.getLogger("igsync.core")


@dataclass
class Core:
    """Every long-lived object of one process, each built once by :func:`build_core`."""

    settings: Settings
    store: Store
    redis: RedisClient
    metrics: Metrics
    channels: ChannelCache
    threads: ThreadResolver
    recorder: MessageRecorder
    pipeline: IngestPipeline
    audit: AuditTrail
    auth: Authenticator
    inbox: InboxService
    sink: EventSink
    triggers: TriggerAdmin
    dedup: EchoDedup
    marksent: MarkSentService
    media: MediaService
    profiles: ProfileService
    changes: MessageEventHandler
    monitor: OpsMonitor
    readiness: Readiness
    sends: SendService
    send_worker: SendWorker
    accounts: AccountsService
    tokens: TokenRefresher
    history: HistoryWorker
    gaps: GapWatch
    # Started in this order by serve, stopped in reverse: the hub outlives the workers that
    # publish through it, and the dedup Redis client (marks) closes last.
    services: list[Any] = field(default_factory=list)
    # The WebSocket hub when this core publishes to it (the default); None with another sink.
    realtime: EventHub | None = None
    # The HTTP requests in flight, closed to new ones while the process drains.
    gate: RequestGate = field(default_factory=RequestGate)

    async def ready(self) -> dict[str, bool]:
        """Whether each store answers now (``/readyz``); also sets ``igsync_ready``."""
        return await self.readiness.check()

    async def start(self) -> None:
        """Start the background services in order."""
        for service in self.services:
            await service.start()

    async def close(self) -> None:
        """Stop the services in reverse order, then close the shared clients."""
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
    """Build a process's core inside the running loop: every client once, every object complete.

    Objects that need each other are joined through small shared pieces created first (the
    event publisher, the webhook load counter), never by setting attributes afterwards."""
    if not settings.mongo_url or not settings.redis_url:
        raise ValueError("build_core needs store URLs; embedded stores are started by the CLI")
    metrics = metrics or Metrics()
    store = await _build_store(settings, metrics, mongo_listeners or [], ensure_indexes)
    topology = RedisTopology.of(settings)
    redis = topology.client(timeout_ms=settings.store_timeout_ms, metrics=metrics)
    channels = ChannelCache(store, ttl_secs=settings.channel_cache_secs)
    threads = ThreadResolver(store)
    realtime = _build_realtime(settings, topology, metrics, OwnerScope(store)) if sink is None else None
    sink = realtime if realtime is not None else sink
    assert sink is not None
    publisher = SafePublisher(sink)
    webhooks = InFlight()
    dispatcher = _build_dispatcher(settings, store, redis, metrics, webhooks_busy=webhooks.busy)
    health = ChannelHealth(store, publisher.publish, metrics)
    media = _build_media(settings, store, metrics, publisher, transcriber, health)
    changes = MessageEventHandler(store, publisher.publish, metrics, media)
    recorder = _build_recorder(settings, store, publisher, changes, media, dispatcher)
    profiles = _build_profiles(settings, store, metrics, publisher, media, health)
    marks, pairing = _build_dedup_layers(settings, store, metrics)
    dedup = EchoDedup(store, recorder, pairing, marks, metrics)
    new_customer_hooks: list[NewCustomerHook] = [profiles]
    pipeline = _build_pipeline(
        settings, store, metrics, recorder, channels, threads, changes, dedup, new_customer_hooks, webhooks
    )
    audit = pipeline.audit  # first of the services, so it stops last: every queued copy written
    auth = _build_auth(settings, store)
    marksent = MarkSentService(
        store=store, auth=auth, channels=channels, threads=threads, recorder=recorder, pairing=pairing, marks=marks,
        metrics=metrics, new_customer_hooks=new_customer_hooks,
    )  # fmt: skip
    sends, send_worker = _build_sends(settings, store, metrics, publisher, auth, marksent, health)
    imported = ImportedMessages(store, threads, recorder, new_customer_hooks)
    wake = {"media": media.wake, "sends": send_worker.wake}
    accounts = _build_accounts(settings, store, metrics, publisher, health, imported, channels, profiles, wake=wake)
    readiness = Readiness(store, redis, metrics, timeout_secs=settings.readyz_timeout_ms / 1000)
    monitor = _build_monitor(settings, store, metrics, readiness)
    expiry = ExpirySweeper(store.expiry, metrics, interval_secs=settings.expiry_sweep_secs)
    services = [audit, marks, *([realtime] if realtime else []), media, profiles, dispatcher, send_worker]
    services += [*accounts.values(), monitor, expiry]
    return Core(
        settings=settings,
        store=store,
        redis=redis,
        metrics=metrics,
        channels=channels,
        threads=threads,
        recorder=recorder,
        pipeline=pipeline,
        audit=audit,
        auth=auth,
        inbox=InboxService(store, channels, publish=publisher.publish),
        sink=sink,
        triggers=TriggerAdmin(store, on_requeued=dispatcher.wake),
        dedup=dedup,
        marksent=marksent,
        media=media,
        profiles=profiles,
        changes=changes,
        monitor=monitor,
        readiness=readiness,
        sends=sends,
        send_worker=send_worker,
        **accounts,
        services=services,
        realtime=realtime,
    )


def _build_accounts(
    settings: Settings,
    store: Store,
    metrics: Metrics,
    publisher: SafePublisher,
    health: ChannelHealth,
    imported: ImportedMessages,
    channels: ChannelCache,
    profiles: ProfileService,
    *,
    wake: dict[str, Callable[[], None]],
) -> dict[str, Any]:
    """The accounts services, by their Core field, in start order."""
    # Each gets its own Graph client: a slow history import must not queue a token refresh.
    history = HistoryWorker(
        store,
        HistoryImporter(
            store=store,
            graph=_graph_client(settings, 2),
            messages=imported,
            health=health,
            metrics=metrics,
            calls_per_sec=settings.history_calls_per_sec,
            lease_secs=settings.history_lease_secs,
        ),
        publisher.publish,
        poll_secs=settings.history_lease_secs / 4,
        lease_secs=settings.history_lease_secs,
        enabled=settings.history_concurrency > 0,
    )
    gaps = GapWatch(
        store,
        heartbeat_secs=settings.heartbeat_secs,
        retry_window_secs=settings.meta_retry_window_secs,
        on_queued=history.wake,
    )
    tokens = TokenRefresher(
        store,
        _graph_client(settings, 2),
        health,
        metrics,
        check_secs=settings.token_check_secs,
        refresh_before_days=settings.token_refresh_before_days,
    )
    accounts = AccountsService(
        store=store,
        channel_cache=channels,
        graph=_graph_client(settings, 2),
        health=health,
        publish=publisher.publish,
        profiles=profiles,
        gaps=gaps,
        wake={**wake, "history": history.wake, "tokens": tokens.wake},
    )
    return {"accounts": accounts, "tokens": tokens, "history": history, "gaps": gaps}


async def _build_store(settings: Settings, metrics: Metrics, listeners: list[Any], ensure_indexes: bool) -> Store:
    store = Store(
        settings.mongo_url or "",
        settings.mongo_db,
        timeout_ms=settings.store_timeout_ms,
        write_concern=settings.mongo_write_concern,
        webhook_events_ttl_days=settings.webhook_events_ttl_days,
        trigger_jobs_ttl_days=settings.trigger_jobs_ttl_days,
        orphan_events_ttl_days=settings.orphan_events_ttl_days,
        listeners=[MongoCommandMetrics(metrics), *listeners],
        expire_by_igsync=settings.expiry_sweep_secs > 0,
    )
    if ensure_indexes:
        await store.ensure_indexes()
    return store


def _build_realtime(settings: Settings, topology: RedisTopology, metrics: Metrics, scope: OwnerScope) -> EventHub:
    # The hub has its own clients: the publish path gets one immediate retry and a short
    # timeout (its breaker takes over), the pub/sub reader none (its loop reconnects).
    return EventHub(
        settings=settings,
        topology=topology,
        publish_redis=topology.client(timeout_ms=settings.realtime_redis_timeout_ms, retries=1, metrics=metrics),
        pubsub_redis=topology.client(timeout_ms=settings.store_timeout_ms, retries=0, metrics=metrics),
        metrics=metrics,
        inbox=scope,
    )


def _build_dispatcher(
    settings: Settings, store: Store, redis: aioredis.Redis, metrics: Metrics, *, webhooks_busy: Callable[[], bool]
) -> TriggerDispatcher:
    # Trigger deliveries are the only outgoing HTTP of the dispatcher: one client, one
    # connection slot per lane delivered at once. Webhooks first: it gives way while this
    # process is handling them.
    return TriggerDispatcher(
        settings=settings,
        store=store,
        redis=redis,
        http=AsyncHTTPClient(
            force_instance=True, max_clients=max(1, settings.trigger_workers), resolver=CachingResolver()
        ),
        metrics=metrics,
        webhooks_busy=webhooks_busy,
    )


def _graph_client(settings: Settings, max_clients: int) -> GraphApiClient:
    return GraphApiClient(
        settings.graph_api_url,
        settings.graph_api_version,
        timeout_secs=settings.graph_api_timeout_secs,
        max_clients=max(max_clients, 1),
        facebook_url=settings.facebook_graph_api_url,
    )


def _build_sends(
    settings: Settings,
    store: Store,
    metrics: Metrics,
    publisher: SafePublisher,
    auth: Authenticator,
    marksent: MarkSentService,
    health: ChannelHealth,
) -> tuple[SendService, SendWorker]:
    worker = SendWorker(
        store,
        _graph_client(settings, settings.send_concurrency),
        publisher,
        metrics,
        concurrency=settings.send_concurrency,
        lease_secs=settings.send_lease_secs,
        max_attempts=settings.send_max_attempts,
        retry_base_secs=settings.send_retry_base_secs,
        poll_secs=settings.send_poll_secs,
        limiter=SendLimiter(text_per_sec=settings.send_text_per_sec, media_per_sec=settings.send_media_per_sec),
        health=health,
    )
    service = SendService(
        store=store, auth=auth, scope=OwnerScope(store), marksent=marksent, metrics=metrics, wake_worker=worker.wake
    )
    return service, worker


def _build_media(
    settings: Settings,
    store: Store,
    metrics: Metrics,
    publisher: SafePublisher,
    transcriber: Transcriber | None,
    health: ChannelHealth,
) -> MediaService:
    return MediaService(
        store,
        publisher.publish,
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
        links=LinkRefresher(store, _graph_client(settings, settings.media_concurrency), metrics, health),
    )


def _build_profiles(
    settings: Settings,
    store: Store,
    metrics: Metrics,
    publisher: SafePublisher,
    media: MediaService,
    health: ChannelHealth,
) -> ProfileService:
    return ProfileService(
        store,
        _graph_client(settings, settings.profile_concurrency),
        publisher.publish,
        metrics,
        concurrency=settings.profile_concurrency,
        max_attempts=settings.profile_max_attempts,
        retry_base_secs=settings.profile_retry_base_secs,
        refresh_after_secs=settings.profile_refresh_days * 86400,
        pictures=media,
        health=health,
    )


def _build_dedup_layers(settings: Settings, store: Store, metrics: Metrics) -> tuple[SentMarks, EchoPairing]:
    # Dedup hints get their own Redis client with a short timeout (and the default single
    # immediate retry on a connection error, for restarts): a slow or dead Redis is skipped,
    # never waited for (MongoDB decides alone, P4).
    marks = SentMarks(
        RedisTopology.of(settings).client(timeout_ms=settings.dedup_redis_timeout_ms, metrics=metrics),
        metrics,
        ttl_secs=settings.dedup_ttl_secs,
    )
    return marks, EchoPairing(store.echo_pairs, window_secs=settings.dedup_window_secs)


def _build_recorder(
    settings: Settings,
    store: Store,
    publisher: SafePublisher,
    changes: MessageEventHandler,
    media: MediaService,
    dispatcher: TriggerDispatcher,
) -> MessageRecorder:
    return MessageRecorder(
        store,
        publisher,
        # Order matters: earlier events are applied (an unsend clears the attachments)
        # before media jobs are queued.
        hooks=[MessageArrivalHook(store, changes), media],
        before_hooks=[
            TriggerOutbox(store, channel_cache_secs=settings.channel_cache_secs, on_recorded=dispatcher.wake)
        ],
    )


def _build_auth(settings: Settings, store: Store) -> Authenticator:
    return Authenticator(
        store,
        admin_token=settings.admin_token,
        internal_tokens=settings.internal_tokens,
        metrics_token=settings.metrics_token,
    )


def _build_monitor(settings: Settings, store: Store, metrics: Metrics, readiness: Readiness) -> OpsMonitor:
    return OpsMonitor(
        store,
        metrics,
        readiness.check,
        interval_secs=settings.monitor_interval_secs,
        dedup_window_secs=settings.dedup_window_secs,
    )


def _build_pipeline(
    settings: Settings,
    store: Store,
    metrics: Metrics,
    recorder: MessageRecorder,
    channels: ChannelCache,
    threads: ThreadResolver,
    changes: MessageEventHandler,
    dedup: EchoDedup,
    new_customer_hooks: list[NewCustomerHook],
    webhooks: InFlight,
) -> IngestPipeline:
    return IngestPipeline(
        store=store,
        app_secret=settings.app_secret or "",
        channels=channels,
        threads=threads,
        recorder=recorder,
        metrics=metrics,
        audit=AuditTrail(store.webhook_events, metrics),
        item_events=changes,
        new_customer_hooks=new_customer_hooks,
        activity=ChannelActivity(store, metrics),
        owner_messages=dedup,
        load=webhooks,
        recent=RecentlyStored(),
    )
