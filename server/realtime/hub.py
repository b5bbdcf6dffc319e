"""The realtime hub: the :class:`~server.inbox.events.EventSink` that takes the core's events to every
WebSocket of every process, in order, with resume.

Owns the delivery half of API.md §4 (the vocabulary is :mod:`server.inbox.events`):

* **publish** — each batch of one channel's events is appended to the channel's log by one
  Lua script (INCR seq + XADD MAXLEN ~ + PUBLISH, :mod:`server.realtime.eventlog`), then routed to
  this process's own sockets at once from the script's reply; the pub/sub echo of the same
  events is recognised by its seq and dropped (:mod:`server.realtime.registry`).
* **pub/sub** — one connection per process (:class:`PubSubLink`; on a Redis Cluster one per
  shard, :class:`ClusterLinks`), subscribed to the live channel of each channel that has a
  local subscriber (so a process receives only what its sockets want), plus a control
  channel that keeps the connection up. Its reader loop reconnects with backoff, counts
  ``igsync_pubsub_reconnects_total``, re-subscribes, and catches every route up from the
  stream — what was published meanwhile is delivered, or, when no longer retained or the
  epoch changed, ``resync_required``. After a failover (another server answers) the logs of
  the channels concerned are renewed first: the promoted replica may lack their last events,
  so their subscribers resync rather than trust seqs that could now name other events.
* **Redis down** — publishing uses its own client with short timeouts behind a circuit
  breaker, so a webhook waits at most ``IGSYNC_REALTIME_REDIS_TIMEOUT_MS`` once, then not
  at all while the breaker is open. Events are still routed to this process's sockets,
  with ``"seq": null`` (they are in no log). The channels concerned are remembered; once
  Redis answers again the hub appends one ``resync_required`` event to each of their logs,
  so every subscriber in every process — which may have missed them — reloads by REST.
* **sessions** — creates a :class:`~server.realtime.session.WsSession` per socket, attaches and
  detaches its subscriptions, and on shutdown drains every socket and closes it with 1001.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Collection

import redis.asyncio as aioredis

from config import Settings
from server.api.auth import Principal
from server.inbox.events import RESYNC_REQUIRED, Event
from server.inbox.scope import OwnerScope
from server.ops.metrics import Metrics
from server.ops.redis_clients import RedisTopology
from server.realtime.eventlog import (
    EPOCH_PLACEHOLDER,
    SEQ_PLACEHOLDER,
    Encoded,
    EventLog,
    Stored,
    channel_of_live,
    encode,
    parse_live,
)
from server.realtime.pubsub import (
    SUBSCRIBE_TIMEOUT_SECS,
    CircuitBreaker,
    ClusterLinks,
    PubSubLink,
)
from server.realtime.registry import ChannelRoute, Registry
from server.realtime.session import CLOSE_GOING_AWAY, Transport, WsSession

log = logging.getLogger("igsync.realtime")

# On shutdown: how long to wait for clients to answer our 1001 close frame.
CLOSE_WAIT_SECS = 2.0


class EventHub:
    """The process's realtime service (``core.realtime``, in ``core.services``)."""

    def __init__(
        self,
        *,
        settings: Settings,
        topology: RedisTopology,
        publish_redis: aioredis.Redis,
        pubsub_redis: aioredis.Redis,
        metrics: Metrics,
        inbox: OwnerScope,
    ) -> None:
        self.settings = settings
        self.publish_redis = publish_redis
        self.pubsub_redis = pubsub_redis
        self.metrics = metrics
        self.inbox = inbox
        self.log = EventLog(
            publish_redis,
            max_events=settings.ws_log_max_events,
            ttl_secs=settings.ws_log_ttl_secs,
            once_ttl_secs=settings.ws_once_ttl_secs,
            sharded=topology.sharded,
        )
        self.registry = Registry(self.log.read)
        self.link: PubSubLink | ClusterLinks
        if topology.cluster:
            self.link = ClusterLinks(
                pubsub_redis,
                topology,
                timeout_ms=settings.store_timeout_ms,
                on_message=self._on_live,
                on_connected=self._on_connected,
                metrics=metrics,
            )
        else:
            self.link = PubSubLink(
                pubsub_redis, on_message=self._on_live, on_connected=self._on_connected, metrics=metrics
            )
        self.breaker = CircuitBreaker()
        self.publish_timeout = settings.realtime_redis_timeout_ms / 1000
        self.sessions: set[WsSession] = set()
        # Channels that had events routed without a seq (Redis unreachable).
        self.degraded_channels: set[str] = set()
        self._flushing = False
        self.closing = False

    # -- service -----------------------------------------------------------------------

    async def start(self) -> None:
        """Start the pub/sub reader and give it a moment to connect, so the first sockets
        get a position at once (with Redis down, go on: the reader keeps trying)."""
        self.link.start()
        if not await self.link.wait_first_connection(SUBSCRIBE_TIMEOUT_SECS):
            log.warning("Redis pub/sub not connected at start; live events are local until it is")

    async def stop(self) -> None:
        """Close every socket with 1001 (after its queue drains), then the pub/sub and clients."""
        self.closing = True
        sessions = list(self.sessions)
        if sessions:
            log.info("closing %d WebSocket connections (1001)", len(sessions))
            await asyncio.gather(
                *(s.drain_and_close(CLOSE_GOING_AWAY, "server shutting down", "shutdown") for s in sessions)
            )
            waits = [s.transport_done for s in sessions if not s.transport_done.done()]
            if waits:
                await asyncio.wait(waits, timeout=CLOSE_WAIT_SECS)
        await self.link.stop()
        await self.registry.close()
        for client in (self.pubsub_redis, self.publish_redis):
            with contextlib.suppress(Exception):
                await client.aclose()

    # -- sockets -----------------------------------------------------------------------

    def open_session(self, principal: Principal, transport: Transport) -> WsSession:
        """A session for a new socket, registered with the hub."""
        session = WsSession(
            principal,
            transport,
            hub=self,
            inbox=self.inbox,
            metrics=self.metrics,
            queue_max=self.settings.ws_queue_max,
        )
        self.sessions.add(session)
        session.start()
        if self.closing:
            session.close(CLOSE_GOING_AWAY, "server shutting down", "shutdown")
        return session

    async def attach(
        self, session: WsSession, channel_id: str, conversation_id: str | None
    ) -> tuple[str | None, int | None]:
        """Register a subscription; returns the (epoch, seq) it starts after — (None, None)
        while the log cannot be reached. Every event after that position is offered to the
        session, each once."""
        route, created = self.registry.add(session, channel_id, conversation_id)
        if created:
            route.ready = asyncio.get_running_loop().create_future()
            self.link.spawn(self._set_up(route))
        assert route.ready is not None
        if not route.ready.done():
            return await asyncio.shield(route.ready)
        return route.epoch, (route.delivered if route.epoch is not None else None)

    async def _set_up(self, route: ChannelRoute) -> None:
        assert route.ready is not None
        try:
            await self.link.subscribe(route.channel_id)
            epoch, latest = await self.log.state(route.channel_id)
            if self.registry.route(route.channel_id) is route:
                self.registry.set_position(route, epoch, latest)
        except Exception as exc:
            log.warning(
                "channel %s: live events unavailable (%s); local events only until Redis returns",
                route.channel_id,
                type(exc).__name__,
            )
        finally:
            route.established = True
            if not route.ready.done():
                route.ready.set_result((route.epoch, route.delivered if route.epoch is not None else None))
            if self.registry.route(route.channel_id) is None:
                await self.link.unsubscribe(route.channel_id)

    def detach(self, session: WsSession, channel_id: str, conversation_id: str | None) -> None:
        """Drop one subscription of a session."""
        if self.registry.remove(session, channel_id, conversation_id):
            self.link.spawn(self._unsubscribe_if_unused(channel_id))

    async def _unsubscribe_if_unused(self, channel_id: str) -> None:
        if self.registry.route(channel_id) is None:
            await self.link.unsubscribe(channel_id)

    async def replay(self, channel_id: str, epoch: str, after_seq: int, until_seq: int) -> list[Stored] | None:
        """The channel's logged events in (after_seq, until_seq]; None when no longer all retained."""
        return await self.log.read(channel_id, epoch, after_seq, until_seq)

    def forget(self, session: WsSession) -> None:
        """A closed session: drop all its subscriptions."""
        self.sessions.discard(session)
        for (kind, target), channel_id in list(session.subscriptions.items()):
            self.detach(session, channel_id, target if kind == "conversation" else None)
        session.subscriptions.clear()

    # -- publishing (EventSink) --------------------------------------------------------

    async def publish(self, events: list[Event]) -> bool:
        """Append events to their channels' logs and deliver them to every subscriber; False
        when some went to this process's sockets only (Redis unavailable)."""
        by_channel: dict[str, list[Event]] = {}
        for event in events:
            by_channel.setdefault(event.channel_id, []).append(event)
        settled = True
        for channel_id, group in by_channel.items():
            settled = await self._publish_channel(channel_id, [encode(e) for e in group]) and settled
        return settled

    async def _append(self, channel_id: str, encoded: list[Encoded]) -> tuple[str, list[int]]:
        """The channel's log append, bounded by the publish timeout."""
        # asyncio.timeout, not wait_for: no task per publish on the webhook's path.
        async with asyncio.timeout(self.publish_timeout):
            return await self.log.append(channel_id, encoded)

    async def _publish_channel(self, channel_id: str, encoded: list[Encoded]) -> bool:
        if self.breaker.allows():
            try:
                epoch, seqs = await self._append(channel_id, encoded)
            except Exception as exc:
                self.breaker.failure()
                self.metrics.store_errors.labels(store="redis").inc()
                log.warning(
                    "Redis unavailable for channel %s events (%s); delivering to this process only",
                    channel_id,
                    type(exc).__name__,
                )
            else:
                self.breaker.reset()
                self._position_if_unknown(channel_id)
                for item, seq in zip(encoded, seqs, strict=True):
                    if not seq:
                        continue  # logged before: its fact's events went out already
                    self.registry.publish_sequenced(
                        channel_id,
                        epoch,
                        seq,
                        item.with_seq(seq, epoch),
                        item.received_at,
                        item.conversation_id,
                        item.eid,
                    )
                if self.degraded_channels:
                    self.link.spawn(self.flush_degraded())
                return True
        self.degraded_channels.add(channel_id)
        for item in encoded:
            self.registry.publish_unsequenced(
                channel_id, item.with_seq(None), item.received_at, item.conversation_id, item.eid
            )
        return False

    async def flush_degraded(self) -> None:
        """Redis is back: put one ``resync_required`` into each log that missed events."""
        if self._flushing:
            return
        self._flushing = True
        try:
            for channel_id in list(self.degraded_channels):
                resync = Event(
                    RESYNC_REQUIRED, channel_id, None, {"latest_seq": SEQ_PLACEHOLDER, "epoch": EPOCH_PLACEHOLDER}
                )
                item = encode(resync, splice=True)
                try:
                    epoch, (seq,) = await self._append(channel_id, [item])
                except Exception as exc:
                    log.warning("could not log resync_required for channel %s (%s)", channel_id, type(exc).__name__)
                    return
                self.degraded_channels.discard(channel_id)
                log.info("channel %s: events were delivered locally while Redis was down; resync logged", channel_id)
                self.registry.publish_sequenced(channel_id, epoch, seq, item.with_seq(seq, epoch), None, None)
        finally:
            self._flushing = False

    # -- pub/sub -----------------------------------------------------------------------

    def _on_live(self, name: bytes, payload: bytes) -> None:
        channel_id = channel_of_live(name)
        message = parse_live(payload)
        if channel_id is None or message is None:
            return
        self._position_if_unknown(channel_id)
        self.registry.publish_sequenced(
            channel_id,
            message.epoch,
            message.seq,
            message.envelope,
            message.received_at,
            message.conversation_id,
            message.eid,
        )

    async def _on_connected(
        self, reconnected: bool, *, failover: bool = False, channels: Collection[str] | None = None
    ) -> None:
        """Subscribe the routes again (all, or ``channels``) and catch them up from the stream;
        after a failover renew their logs first."""
        self.breaker.reset()
        routes = [
            route
            for route in self.registry.routes.values()
            if route.established and (channels is None or route.channel_id in channels)
        ]
        if failover:
            await asyncio.gather(*(self._renew(route) for route in routes))
        await asyncio.gather(*(self._resume(route) for route in routes))
        if self.degraded_channels:
            await self.flush_degraded()

    async def _renew(self, route: ChannelRoute) -> None:
        if route.epoch is None:
            return  # no position yet: nothing it could be wrong about
        try:
            await self.log.renew(route.channel_id, route.epoch)
        except Exception as exc:
            log.warning("channel %s: could not renew the event log (%s)", route.channel_id, type(exc).__name__)

    def _position_if_unknown(self, channel_id: str) -> None:
        """A route set up while Redis did not answer learns its position as soon as Redis
        works again for this channel — also when the pub/sub connection itself never broke."""
        route = self.registry.route(channel_id)
        if route is not None and route.established and route.epoch is None and not route.resuming:
            self.link.spawn(self._resume(route))

    async def _resume(self, route: ChannelRoute) -> None:
        if route.resuming:
            return
        route.resuming = True
        try:
            await self._resume_now(route)
        finally:
            route.resuming = False

    async def _resume_now(self, route: ChannelRoute) -> None:
        try:
            await self.link.subscribe(route.channel_id)
            epoch, latest = await self.log.state(route.channel_id)
        except Exception as exc:
            log.warning("channel %s: could not resume live events (%s)", route.channel_id, type(exc).__name__)
            return
        if self.registry.route(route.channel_id) is route:
            self.registry.catch_up(route, epoch, latest)
