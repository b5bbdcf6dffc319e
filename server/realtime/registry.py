"""The in-process registry: which local sockets want which channel's and conversation's events,
and the per-channel ordering that makes every socket see each ``seq`` once, in order.

Events reach a process by two paths — its own publishes (the Lua script's reply) and the
pub/sub connection (everyone's publishes, its own included) — and the two race. So each
channel with local subscribers has a :class:`ChannelRoute` that remembers the last ``seq``
it routed (``delivered``) in the current ``epoch``:

* ``seq <= delivered`` — already routed (typically our own publish's pub/sub echo): dropped;
* ``seq == delivered + 1`` — routed now, then any held successors;
* ``seq > delivered + 1`` — held, and the gap is read from the stream at once. The script
  XADDs before it PUBLISHes and Redis runs scripts one at a time, so once seq *s* is seen,
  every seq below it is already in the stream: no waiting, no timer. If the gap is no
  longer retained, the route's subscribers get ``resync_required`` and the route moves on.

Events published while Redis was unreachable have no seq (``None``) and are routed at once
without ordering; see :mod:`server.realtime.hub`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

from server.realtime.eventlog import Stored

log = logging.getLogger("igsync.realtime")


class Subscriber(Protocol):
    """What the registry needs of a socket's session (see :mod:`server.realtime.session`)."""

    def offer(
        self, channel_id: str, seq: int | None, envelope: bytes, received_at: float | None, conversation_id: str | None
    ) -> None:
        """Take an event of a channel the subscriber follows."""
        ...

    def resync(self, channel_id: str, latest_seq: int, epoch: str) -> None:
        """The subscriber missed events: tell it to reload."""
        ...


# (channel_id, epoch, after_seq, up_to_seq) → stored events, or None when not retained.
RangeReader = Callable[[str, str, int, int], Awaitable[list[Stored] | None]]


@dataclass
class Pending:
    seq: int
    envelope: bytes
    received_at: float | None
    conversation_id: str | None
    eid: str = ""


# Ids of events routed without a seq that a route remembers (oldest forgotten first).
UNSEQUENCED_MEMORY = 10_000


@dataclass(eq=False)
class ChannelRoute:
    channel_id: str
    # None while the log's position is unknown (Redis unreachable when the route was made).
    epoch: str | None = None
    delivered: int = 0
    held: dict[int, Pending] = field(default_factory=dict)
    filling: bool = False
    # The seq a running gap read must reach.
    fill_to: int = 0
    channel_subs: set[Subscriber] = field(default_factory=set)
    conversation_subs: dict[str, set[Subscriber]] = field(default_factory=dict)
    # Epochs this route has left: a late event of one of them is stale, not a new epoch.
    retired: set[str] = field(default_factory=set)
    # Done once the pub/sub subscription is confirmed and the position read (or failed);
    # its result is the (epoch, seq) the first subscribers start after.
    ready: asyncio.Future[tuple[str | None, int | None]] | None = None
    # Events routed without a seq, by id: their sequenced copy is not routed again.
    unsequenced: dict[str, None] = field(default_factory=dict)
    # Set up once: from then on a change of position is news to the subscribers.
    established: bool = False
    # A resume (subscribe again + catch up) is running for this route.
    resuming: bool = False

    @property
    def empty(self) -> bool:
        """No subscriber left."""
        return not self.channel_subs and not self.conversation_subs

    def subscribers(self) -> set[Subscriber]:
        """Every subscriber of the channel or of one of its conversations."""
        out = set(self.channel_subs)
        for subs in self.conversation_subs.values():
            out |= subs
        return out

    def targets(self, conversation_id: str | None) -> set[Subscriber]:
        """Each socket once, even when it follows the channel and the conversation. An event
        of no conversation (a logged resync_required) concerns every subscriber."""
        if conversation_id is None:
            return self.subscribers()
        conv = self.conversation_subs.get(conversation_id)
        if not conv:
            return self.channel_subs
        return self.channel_subs | conv


class Registry:
    def __init__(self, read_range: RangeReader) -> None:
        self.read_range = read_range
        self.routes: dict[str, ChannelRoute] = {}
        self._fills: set[asyncio.Task[None]] = set()

    # -- membership --------------------------------------------------------------------

    def route(self, channel_id: str) -> ChannelRoute | None:
        """The route of a channel, if it has local subscribers."""
        return self.routes.get(channel_id)

    def add(
        self, subscriber: Subscriber, channel_id: str, conversation_id: str | None = None
    ) -> tuple[ChannelRoute, bool]:
        """Register; returns (route, created) — a created route needs its position set up."""
        route = self.routes.get(channel_id)
        created = route is None
        if route is None:
            route = self.routes[channel_id] = ChannelRoute(channel_id)
        if conversation_id is None:
            route.channel_subs.add(subscriber)
        else:
            route.conversation_subs.setdefault(conversation_id, set()).add(subscriber)
        return route, created

    def remove(self, subscriber: Subscriber, channel_id: str, conversation_id: str | None = None) -> bool:
        """Unregister; returns True when the channel has no local subscriber left (route dropped)."""
        route = self.routes.get(channel_id)
        if route is None:
            return False
        if conversation_id is None:
            route.channel_subs.discard(subscriber)
        else:
            subs = route.conversation_subs.get(conversation_id)
            if subs is not None:
                subs.discard(subscriber)
                if not subs:
                    del route.conversation_subs[conversation_id]
        if route.empty:
            del self.routes[channel_id]
            return True
        return False

    # -- positions ---------------------------------------------------------------------

    def set_position(self, route: ChannelRoute, epoch: str, latest: int) -> None:
        """The route's position in the log, read from Redis. An established route that had
        another (or no) position tells its subscribers to resync: what they hold may be
        incomplete."""
        previous = route.epoch
        if previous == epoch:
            if latest > route.delivered:
                self._start_fill(route, latest)
            return
        if previous is not None:
            route.retired.add(previous)
        route.epoch = epoch
        route.delivered = latest
        route.fill_to = latest
        route.held.clear()
        if route.established:
            for subscriber in list(route.subscribers()):
                subscriber.resync(route.channel_id, latest, epoch)

    def catch_up(self, route: ChannelRoute, epoch: str, latest: int) -> None:
        """After a pub/sub reconnect: route what was published meanwhile (from the stream), or
        resync when the epoch changed."""
        if route.epoch == epoch:
            if latest > route.delivered:
                self._start_fill(route, latest)
        else:
            self.set_position(route, epoch, latest)

    # -- routing -----------------------------------------------------------------------

    def publish_sequenced(
        self,
        channel_id: str,
        epoch: str,
        seq: int,
        envelope: bytes,
        received_at: float | None,
        conversation_id: str | None,
        eid: str = "",
    ) -> None:
        """Deliver a logged event to the local subscribers, each sequence number once."""
        route = self.routes.get(channel_id)
        if route is None or route.epoch is None:
            # No local subscriber; or the position is being set up, after which the route's
            # subscribers start from the position read (this event is at or before it, or is
            # caught up by the gap read the next event triggers).
            return
        if epoch != route.epoch:
            if epoch in route.retired:
                return
            # The log was reset (Redis flushed or replaced): every position is void.
            log.warning("channel %s event log has a new epoch; subscribers resync", channel_id)
            self.set_position(route, epoch, 0)
        if seq <= route.delivered:
            return
        route.held[seq] = Pending(seq, envelope, received_at, conversation_id, eid)
        self._drain(route)
        if route.held and not route.filling:
            self._start_fill(route, min(route.held) - 1)

    def publish_unsequenced(
        self, channel_id: str, envelope: bytes, received_at: float, conversation_id: str | None, eid: str = ""
    ) -> None:
        """An event that is not in the log (Redis unreachable): straight to local sockets."""
        route = self.routes.get(channel_id)
        if route is None:
            return
        if eid:
            route.unsequenced[eid] = None
            if len(route.unsequenced) > UNSEQUENCED_MEMORY:
                del route.unsequenced[next(iter(route.unsequenced))]
        for subscriber in route.targets(conversation_id):
            subscriber.offer(channel_id, None, envelope, received_at, conversation_id)

    def _drain(self, route: ChannelRoute) -> None:
        while route.delivered + 1 in route.held:
            item = route.held.pop(route.delivered + 1)
            route.delivered = item.seq
            if item.eid and route.unsequenced and item.eid in route.unsequenced:
                # Already routed without a seq (its publish timed out after Redis ran it).
                del route.unsequenced[item.eid]
                continue
            for subscriber in route.targets(item.conversation_id):
                subscriber.offer(route.channel_id, item.seq, item.envelope, item.received_at, item.conversation_id)

    def _start_fill(self, route: ChannelRoute, up_to: int) -> None:
        route.fill_to = max(route.fill_to, up_to)
        if route.filling or route.epoch is None:
            return
        route.filling = True
        task = asyncio.get_running_loop().create_task(self._fill(route, route.epoch))
        self._fills.add(task)
        task.add_done_callback(self._fills.discard)

    async def _fill(self, route: ChannelRoute, epoch: str) -> None:
        """Read the stream up to ``route.fill_to`` (which may rise meanwhile) and route it."""
        try:
            while route.fill_to > route.delivered:
                up_to = route.fill_to
                try:
                    stored = await self.read_range(route.channel_id, epoch, route.delivered, up_to)
                except Exception as exc:
                    log.warning("reading channel %s event log failed (%s)", route.channel_id, type(exc).__name__)
                    stored = None
                if self.routes.get(route.channel_id) is not route or route.epoch != epoch:
                    return
                if stored is None:
                    # Not retained any more (or unreadable): skip the gap, tell the subscribers.
                    if up_to > route.delivered:
                        route.delivered = up_to
                        for subscriber in list(route.subscribers()):
                            subscriber.resync(route.channel_id, up_to, epoch)
                else:
                    for item in stored:
                        if item.seq > route.delivered:
                            route.held.setdefault(
                                item.seq,
                                Pending(item.seq, item.envelope, item.received_at, item.conversation_id, item.eid),
                            )
                for seq in [s for s in route.held if s <= route.delivered]:
                    del route.held[seq]
                self._drain(route)
                if route.held:
                    route.fill_to = max(route.fill_to, min(route.held) - 1)
        finally:
            route.filling = False
            # The epoch changed under this read: the new epoch's gap (if any) is read now.
            if self.routes.get(route.channel_id) is route and route.epoch != epoch and route.fill_to > route.delivered:
                self._start_fill(route, route.fill_to)

    async def close(self) -> None:
        """Cancel the catch-up reads under way."""
        for task in list(self._fills):
            task.cancel()
        self._fills.clear()
