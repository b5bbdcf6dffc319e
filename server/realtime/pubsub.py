"""The hub's Redis pub/sub connections and the circuit breaker of its publish path.

* :class:`PubSubLink` — one connection, subscribed to the live channel of each channel that
  has a local subscriber plus a control channel that keeps it up; its reader loop reconnects
  with backoff and tells the hub (``on_connected``) so routes catch up from the log. On one
  node or Sentinel it is the process's only link; after each reconnect it asks which server it
  reached (``run_id``): another one means a failover (or a restart), and the hub renews the
  logs it knew (a promoted replica may lack their tail).
* :class:`ClusterLinks` — on a Redis Cluster: one sharded link (``SSUBSCRIBE``) per master that
  owns a subscribed channel. When a master's link breaks, the slot map is read again until
  its channels have a new owner (a promoted replica) or the master is back; moved channels
  are subscribed on their new shard, and their logs renewed and caught up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Collection
from functools import partial
from typing import Any, Protocol

import redis.asyncio as aioredis

from server.ops.loops import cancelling
from server.ops.metrics import Metrics
from server.ops.redis_clients import RedisTopology
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
# A cluster's slot map is read again at most this often while a shard's master is away.
REMAP_MIN_SECS = 0.2
REMAP_MAX_SECS = 2.0


class OnConnected(Protocol):
    """What the hub hears when a link is (re)connected: ``reconnected`` after a failure,
    ``failover`` when the server behind it changed, ``channels`` the channels concerned
    (None: all of them)."""

    def __call__(
        self, reconnected: bool, *, failover: bool = False, channels: Collection[str] | None = None
    ) -> Awaitable[None]:
        """Catch up after a (re)connection."""
        ...


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


class _TaskOwner:
    """What both kinds of link share: a main task, background work kept until it ends, and the
    bounded wait for the first connection (``up``/``connected`` are the subclass's)."""

    connected: bool

    def __init__(self) -> None:
        self.up = asyncio.Event()
        self.ever_connected = False
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._background: set[asyncio.Task[Any]] = set()

    def spawn(self, work: Awaitable[Any]) -> None:
        """Run ``work`` in the background, kept until it ends."""
        task = asyncio.ensure_future(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _cancel_tasks(self) -> None:
        self._stopping = True
        tasks = [t for t in [self._task, *self._background] if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task

    async def wait_first_connection(self, timeout: float) -> bool:
        """Just after start the connection may still be on its way: wait for it (bounded).
        Once it has been up, a down link fails at once (the caller degrades)."""
        if not self.ever_connected and not self._stopping:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.up.wait(), timeout)
        return self.connected


class PubSubLink(_TaskOwner):
    """One pub/sub connection with a self-healing reader loop."""

    def __init__(
        self,
        redis: aioredis.Redis,
        *,
        on_message: Callable[[bytes, bytes], None],
        on_connected: OnConnected,
        metrics: Metrics,
        sharded: bool = False,
        control: bytes = CONTROL_CHANNEL,
        on_lost: Callable[[], None] | None = None,
    ) -> None:
        self.redis = redis
        self.on_message = on_message
        self.on_connected = on_connected
        self.on_lost = on_lost
        self.metrics = metrics
        self.sharded = sharded
        self.control = control
        self._message_kind, self._subscribed_kind = ("smessage", "ssubscribe") if sharded else ("message", "subscribe")
        # The run_id of the server this link last reached: another one after a reconnect is a failover.
        self.server_id: str | None = None
        super().__init__()  # ``up`` is set while connected
        self.connected = False
        self._pubsub: Any = None
        self._pending: dict[bytes, deque[asyncio.Future[None]]] = {}

    def start(self) -> None:
        """Start the reader loop."""
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Stop the reader loop and its background work."""
        await self._cancel_tasks()

    async def _run(self) -> None:
        delay = RECONNECT_MIN_SECS
        failed_before = False
        while not self._stopping and not cancelling():
            pubsub = self.redis.pubsub()
            try:
                await self._send_subscribe(pubsub, self.control)
                self._pubsub = pubsub
                while not self._stopping and not cancelling():
                    message = await pubsub.get_message(timeout=READ_POLL_SECS)
                    if message is None:
                        continue
                    kind = message["type"]
                    if kind == self._message_kind:
                        self.on_message(message["channel"], message["data"])
                    elif kind == self._subscribed_kind:
                        if message["channel"] == self.control:
                            self.connected = True
                            self.ever_connected = True
                            self.up.set()
                            delay = RECONNECT_MIN_SECS
                            if failed_before:
                                self.metrics.pubsub_reconnects.inc()
                                log.info("Redis pub/sub reconnected; catching up the subscribed channels")
                            self.spawn(self._connected(failed_before))
                        else:
                            self._confirm(message["channel"])
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not self._stopping:
                    log.warning("Redis pub/sub connection lost (%s); reconnecting", type(exc).__name__)
                    self.metrics.store_errors.labels(store="redis").inc()
            finally:
                was_connected, self.connected = self.connected, False
                self.up.clear()
                self._pubsub = None
                self._fail_pending()
                if was_connected and self.on_lost is not None and not self._stopping:
                    self.on_lost()
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
            if self._stopping:
                break
            failed_before = True
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, RECONNECT_MAX_SECS)

    async def _send_subscribe(self, pubsub: Any, name: bytes) -> None:
        await (pubsub.ssubscribe(name) if self.sharded else pubsub.subscribe(name))

    async def _connected(self, reconnected: bool) -> None:
        # Which server answers now: after a failover (or a restart from an older snapshot) the
        # logs this process knew may have lost their tail, and their seqs would be reused.
        server_id = await self._server_id()
        failover = reconnected and None not in (server_id, self.server_id) and server_id != self.server_id
        if server_id is not None:
            self.server_id = server_id
        if failover:
            log.warning("Redis pub/sub reconnected to another server (a failover); event logs are renewed")
        await self.on_connected(reconnected, failover=failover)

    async def _server_id(self) -> str | None:
        try:
            info = await self.redis.info("server")
        except Exception as exc:
            log.warning("could not ask Redis which server answers (%s)", type(exc).__name__)
            return None
        run_id = info.get("run_id")
        return run_id.decode() if isinstance(run_id, bytes) else run_id

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
        await self._send_subscribe(pubsub, name)
        await asyncio.wait_for(asyncio.shield(future), SUBSCRIBE_TIMEOUT_SECS)

    async def unsubscribe(self, channel_id: str) -> None:
        """Stop receiving a channel's live events."""
        pubsub = self._pubsub
        if self.connected and pubsub is not None:
            name = live_channel(channel_id)
            with contextlib.suppress(Exception):
                await (pubsub.sunsubscribe(name) if self.sharded else pubsub.unsubscribe(name))


class ClusterLinks(_TaskOwner):
    """Sharded pub/sub on a Redis Cluster: one :class:`PubSubLink` per master that owns a
    subscribed channel, with the same face as one link (the hub does not tell them apart)."""

    def __init__(
        self,
        cluster: Any,
        topology: RedisTopology,
        *,
        timeout_ms: int,
        on_message: Callable[[bytes, bytes], None],
        on_connected: OnConnected,
        metrics: Metrics,
    ) -> None:
        self.cluster = cluster
        self.topology = topology
        self.timeout_ms = timeout_ms
        self.on_message = on_message
        self.on_connected = on_connected
        self.metrics = metrics
        self.links: dict[str, PubSubLink] = {}
        # channel id → the node whose link holds its subscription
        self.owner: dict[str, str] = {}
        self._remapping: set[str] = set()
        super().__init__()  # ``up`` is set once the slot map is known

    @property
    def connected(self) -> bool:
        """The slot map is known (each shard's link reports its own state)."""
        return self.up.is_set()

    def start(self) -> None:
        """Learn the slot map (retrying until the cluster answers)."""
        self._task = asyncio.get_running_loop().create_task(self._learn_map())

    async def _learn_map(self) -> None:
        delay = RECONNECT_MIN_SECS
        while not self._stopping:
            try:
                await self.cluster.initialize()
            except Exception as exc:
                log.warning("Redis Cluster slot map unavailable (%s); retrying", type(exc).__name__)
                await asyncio.sleep(delay * random.uniform(0.5, 1.0))
                delay = min(delay * 2, RECONNECT_MAX_SECS)
                continue
            self.up.set()
            self.ever_connected = True
            return

    async def stop(self) -> None:
        """Stop every shard's link and the background work."""
        await self._cancel_tasks()
        for link in list(self.links.values()):
            await self._close(link)
        self.links.clear()

    async def subscribe(self, channel_id: str) -> None:
        """Subscribe on the shard that owns the channel now; returns once it confirmed."""
        if not await self.wait_first_connection(SUBSCRIBE_TIMEOUT_SECS):
            raise LinkDown("Redis Cluster slot map unknown")
        node = self.cluster.get_node_from_key(live_channel(channel_id))
        if node is None:
            raise LinkDown("no node owns the channel's slot")
        previous = self.owner.get(channel_id)
        if previous is not None and previous != node.name and previous in self.links:
            await self.links[previous].unsubscribe(channel_id)
        self.owner[channel_id] = node.name
        await self._link_of(node).subscribe(channel_id)

    async def unsubscribe(self, channel_id: str) -> None:
        """Stop receiving a channel's live events."""
        name = self.owner.pop(channel_id, None)
        link = self.links.get(name) if name is not None else None
        if link is not None:
            await link.unsubscribe(channel_id)

    def _link_of(self, node: Any) -> PubSubLink:
        link = self.links.get(node.name)
        if link is None:
            link = PubSubLink(
                self.topology.node_client(node.host, node.port, timeout_ms=self.timeout_ms, metrics=self.metrics),
                on_message=self.on_message,
                on_connected=partial(self._shard_connected, node.name),
                metrics=self.metrics,
                sharded=True,
                control=self._control_channel(node.name),
                on_lost=partial(self._shard_lost, node.name),
            )
            self.links[node.name] = link
            link.start()
        return link

    def _control_channel(self, node_name: str) -> bytes:
        # A shard channel may only be subscribed on the node that owns its slot: pick a name
        # whose slot this node owns (a few tries: each master owns about 1/N of the slots).
        for n in range(100_000):
            name = f"{CONTROL_CHANNEL.decode()}:{{{n}}}"
            node = self.cluster.get_node_from_key(name)
            if node is not None and node.name == node_name:
                return name.encode()
        raise LinkDown(f"node {node_name} owns no slot")

    async def _shard_connected(
        self, node_name: str, reconnected: bool, *, failover: bool = False, channels: Collection[str] | None = None
    ) -> None:
        if reconnected or failover:
            mine = [channel for channel, owner in self.owner.items() if owner == node_name]
            await self.on_connected(reconnected, failover=failover, channels=mine)

    def _shard_lost(self, node_name: str) -> None:
        if node_name not in self._remapping and not self._stopping:
            self._remapping.add(node_name)
            self.spawn(self._remap(node_name))

    async def _remap(self, node_name: str) -> None:
        """A shard's connection broke. Its master may be gone for good (a replica promoted in
        its place): read the slot map again until its channels have a new owner, or it is back."""
        delay = REMAP_MIN_SECS
        try:
            while not self._stopping:
                link = self.links.get(node_name)
                if link is None or link.connected:
                    return  # a blip: the same master answers again (its link caught up)
                mine = [channel for channel, owner in self.owner.items() if owner == node_name]
                if not mine:
                    await self._retire(node_name)
                    return
                moved = await self._moved_away(node_name, mine)
                if moved:
                    log.warning(
                        "Redis Cluster: %d channels moved from %s to a new master (failover); resuming there",
                        len(moved),
                        node_name,
                    )
                    for channel in moved:
                        self.owner.pop(channel, None)
                    if not any(owner == node_name for owner in self.owner.values()):
                        await self._retire(node_name)
                    # The hub subscribes them again (on their new shard), renews their logs and
                    # catches them up.
                    await self.on_connected(True, failover=True, channels=moved)
                    return
                await asyncio.sleep(delay * random.uniform(0.5, 1.0))
                delay = min(delay * 2, REMAP_MAX_SECS)
        finally:
            self._remapping.discard(node_name)

    async def _moved_away(self, node_name: str, channels: list[str]) -> list[str]:
        try:
            await self.cluster.nodes_manager.initialize()
            owners = {channel: self.cluster.get_node_from_key(live_channel(channel)) for channel in channels}
        except Exception as exc:
            log.info("Redis Cluster slot map not readable yet (%s)", type(exc).__name__)
            return []
        return [channel for channel, node in owners.items() if node is not None and node.name != node_name]

    async def _retire(self, node_name: str) -> None:
        link = self.links.pop(node_name, None)
        if link is not None:
            await self._close(link)

    @staticmethod
    async def _close(link: PubSubLink) -> None:
        await link.stop()
        with contextlib.suppress(Exception):
            await link.redis.aclose()
