"""One WebSocket connection's state: its commands, its subscriptions, its bounded send queue.

A :class:`WsSession` knows nothing of Tornado: it talks to its socket through a
:class:`Transport` (``send(bytes)`` → awaitable, ``close(code, reason)``), so it is tested
with a plain object. It owns:

* the client commands of API.md §4 — ``subscribe`` (channel with ``since_seq``/``epoch``
  replay, or conversation), ``unsubscribe``, ``ping`` — validated, owner scoped
  (``error: "not_found"`` for anything the token does not own), answered in order;
* one bounded queue of outgoing frames drained by one sender task. The bound counts every
  frame not yet flushed to the kernel (queued + handed to the socket). A client whose
  backlog passes ``IGSYNC_WS_QUEUE_MAX`` is closed with 1013 and counted as
  ``slow_consumer``; the publisher only appends to a deque, so a stuck client never
  delays anyone else;
* ``igsync_event_delivery_seconds``: the event's ``received_at`` → its frame flushed.

While a subscribe is being answered, events for that channel are *held* and released after
the ``subscribed`` reply and the replay, so the order on the wire is always reply, replayed
events, live events, each seq once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import orjson

from server.api.auth import Principal
from server.api.errors import ApiError
from server.inbox.events import RESYNC_REQUIRED
from server.ops.metrics import Metrics
from server.realtime.eventlog import Stored, control_envelope

if TYPE_CHECKING:
    from server.inbox.scope import OwnerScope

log = logging.getLogger("igsync.realtime")

# Close codes (RFC 6455 §7.4.1).
CLOSE_GOING_AWAY = 1001
CLOSE_TRY_AGAIN_LATER = 1013
# A socket following more than this many channels/conversations is misbehaving.
MAX_SUBSCRIPTIONS = 500
# On shutdown, how long a socket's queued frames may take to flush before 1001.
DRAIN_SECS = 2.0


class Transport(Protocol):
    def send(self, frames: list[bytes]) -> Awaitable[None]:
        """Write text frames in order; the awaitable resolves when they are flushed (raises
        if the socket is closed)."""
        ...

    def close(self, code: int, reason: str) -> None:
        """Close the socket with ``code`` and ``reason``."""
        ...


class Hub(Protocol):
    """What a session needs of the hub (:class:`server.realtime.hub.EventHub` implements it).

    Declared here so that the session never imports the hub: the hub creates sessions, a
    session only calls back through these four duties."""

    async def attach(
        self, session: WsSession, channel_id: str, conversation_id: str | None
    ) -> tuple[str | None, int | None]:
        """Register a subscription; the (epoch, seq) it starts after, (None, None) without a log."""
        ...

    def detach(self, session: WsSession, channel_id: str, conversation_id: str | None) -> None:
        """Drop one subscription of the session."""
        ...

    def forget(self, session: WsSession) -> None:
        """The session closed: drop all its subscriptions."""
        ...

    async def replay(self, channel_id: str, epoch: str, after_seq: int, until_seq: int) -> list[Stored] | None:
        """The channel's logged events after ``after_seq`` up to ``until_seq``; None when the log
        no longer has them all (the client must resync)."""
        ...


@dataclass
class Held:
    seq: int | None
    data: bytes
    received_at: float | None


class CommandError(Exception):
    def __init__(self, code: str, message: str, fields: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.fields = fields


def _event(name: str, **fields: Any) -> bytes:
    return orjson.dumps({"event": name, **fields})


def error_frame(code: str, message: str, fields: dict[str, Any] | None = None) -> bytes:
    """An ``error`` frame of API.md §4."""
    body: dict[str, Any] = {"event": "error", "error": code, "message": message}
    if fields:
        body["fields"] = fields
    return orjson.dumps(body)


@dataclass(frozen=True)
class Command:
    action: str
    channel_id: str | None = None
    conversation_id: str | None = None
    since_seq: int | None = None
    epoch: str | None = None


def parse_command(raw: str | bytes) -> Command:
    """Validate one client frame; :class:`CommandError` says what is wrong."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise CommandError("invalid_json", "The frame is not valid JSON.") from None
    if not isinstance(body, dict):
        raise CommandError("invalid_command", "A command is a JSON object with an action.")
    action = body.get("action")
    if action == "ping":
        return Command("ping")
    if action not in ("subscribe", "unsubscribe"):
        raise CommandError(
            "invalid_command", "action must be subscribe, unsubscribe or ping.", {"action": ["unknown action"]}
        )
    fields: dict[str, list[str]] = {}
    allowed = {"action", "channel_id", "conversation_id", "since_seq", "epoch"}
    for key in body:
        if key not in allowed:
            fields[key] = ["unknown field"]
    channel_id = body.get("channel_id")
    conversation_id = body.get("conversation_id")
    for key, value in (("channel_id", channel_id), ("conversation_id", conversation_id)):
        if value is not None and (not isinstance(value, str) or not 0 < len(value) <= 64):
            fields[key] = ["must be an id string"]
    if (channel_id is None) == (conversation_id is None):
        fields.setdefault("channel_id", []).append("give exactly one of channel_id or conversation_id")
    since_seq = body.get("since_seq")
    if since_seq is not None and (isinstance(since_seq, bool) or not isinstance(since_seq, int) or since_seq < 0):
        fields["since_seq"] = ["must be a non-negative integer"]
    epoch = body.get("epoch")
    if epoch is not None and (not isinstance(epoch, str) or len(epoch) > 64):
        fields["epoch"] = ["must be the epoch string of a subscribed reply"]
    if action == "unsubscribe" and (since_seq is not None or epoch is not None):
        fields["since_seq" if since_seq is not None else "epoch"] = ["only for subscribe"]
    if fields:
        raise CommandError("validation_error", "The command is invalid.", fields)
    return Command(action, channel_id, conversation_id, since_seq, epoch)


class WsSession:
    def __init__(
        self,
        principal: Principal,
        transport: Transport,
        *,
        hub: Hub,
        inbox: OwnerScope,
        metrics: Metrics,
        queue_max: int,
    ) -> None:
        self.principal = principal
        self.transport = transport
        self.hub = hub
        self.inbox = inbox
        self.metrics = metrics
        self.queue_max = queue_max
        # (kind, id) → channel id, kind "channel" or "conversation".
        self.subscriptions: dict[tuple[str, str], str] = {}
        self._queue: deque[tuple[bytes, float | None]] = deque()
        self._inflight = 0
        self._wake: asyncio.Future[None] | None = None
        self._holding: dict[str, list[Held]] = {}
        self._commands = asyncio.Lock()
        self._sender: asyncio.Task[None] | None = None
        self._draining = False
        self._drained: asyncio.Future[None] | None = None
        self.closed = False
        self.close_reason: str | None = None
        # Resolves when the socket itself has closed (the client answered our close, or left).
        self.transport_done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    # -- life --------------------------------------------------------------------------

    def start(self) -> None:
        """Count the socket and start its sender."""
        self.metrics.ws_connections.inc()
        self._sender = asyncio.get_running_loop().create_task(self._send_loop())

    @property
    def backlog(self) -> int:
        """Frames queued or in flight."""
        return len(self._queue) + self._inflight

    def close(self, code: int, reason: str, metric_reason: str) -> None:
        """Close from our side (slow consumer, shutdown)."""
        if self.closed:
            return
        with contextlib.suppress(Exception):
            self.transport.close(code, reason)
        self._finish(metric_reason)

    def transport_closed(self, metric_reason: str = "client_closed") -> None:
        """The socket has closed (client, ping timeout, network, or the end of our close)."""
        self._finish(metric_reason)
        if not self.transport_done.done():
            self.transport_done.set_result(None)

    def _finish(self, metric_reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        self.close_reason = metric_reason
        self.metrics.ws_disconnects.labels(reason=metric_reason).inc()
        self.metrics.ws_connections.dec()
        self._queue.clear()
        self._holding.clear()
        if self._sender is not None and self._sender is not asyncio.current_task():
            self._sender.cancel()
        self._wakeup()
        self.hub.forget(self)

    async def drain_and_close(self, code: int, reason: str, metric_reason: str, timeout: float = DRAIN_SECS) -> None:
        """Shutdown: let what is queued flush (bounded), then close."""
        self._draining = True
        deadline = time.monotonic() + timeout
        while not self.closed and self.backlog and time.monotonic() < deadline:
            self._drained = asyncio.get_running_loop().create_future()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._drained), deadline - time.monotonic())
        self.close(code, reason, metric_reason)

    # -- outgoing ----------------------------------------------------------------------

    def send(self, data: bytes, received_at: float | None = None) -> None:
        """Queue one frame; a backlog past the limit closes the socket (1013)."""
        if self.closed or self._draining:
            return
        if self.backlog >= self.queue_max:
            log.warning("closing a slow WebSocket consumer (backlog %s)", self.backlog)
            self.close(CLOSE_TRY_AGAIN_LATER, "slow consumer: too many events queued", "slow_consumer")
            return
        self._queue.append((data, received_at))
        self._wakeup()

    def _wakeup(self) -> None:
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)

    async def _send_loop(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while not self.closed:
                if not self._queue:
                    if self._drained is not None and not self._drained.done():
                        self._drained.set_result(None)
                    self._wake = loop.create_future()
                    await self._wake
                    continue
                batch = list(self._queue)
                self._queue.clear()
                self._inflight = len(batch)
                await self.transport.send([data for data, _ in batch])
                self._inflight = 0
                now = time.time()
                for _, received_at in batch:
                    if received_at is not None:
                        self.metrics.event_delivery.observe(max(0.0, now - received_at))
        except asyncio.CancelledError:
            pass
        except Exception as exc:
            # The socket closed under us (WebSocketClosedError, StreamClosedError…).
            log.debug("WebSocket send failed: %s", type(exc).__name__)
            self._inflight = 0
            self._finish("error" if not self.closed else self.close_reason or "error")

    # -- from the registry -------------------------------------------------------------

    def offer(
        self, channel_id: str, seq: int | None, envelope: bytes, received_at: float | None, conversation_id: str | None
    ) -> None:
        """Queue an event (held while a subscribe is being answered)."""
        holding = self._holding.get(channel_id)
        if holding is not None:
            holding.append(Held(seq, envelope, received_at))
            return
        self.send(envelope, received_at)

    def resync(self, channel_id: str, latest_seq: int, epoch: str) -> None:
        """Queue a ``resync_required`` for a channel."""
        frame = control_envelope(
            RESYNC_REQUIRED, channel_id, None, latest_seq, {"latest_seq": latest_seq, "epoch": epoch}, time.time()
        )
        holding = self._holding.get(channel_id)
        if holding is not None:
            holding.append(Held(None, frame, None))
            return
        self.send(frame)

    # -- commands ----------------------------------------------------------------------

    async def handle_frame(self, raw: str | bytes) -> None:
        """One client frame, answered in order (frames are handled one at a time)."""
        async with self._commands:
            if self.closed:
                return
            try:
                command = parse_command(raw)
                if command.action == "ping":
                    self.send(_event("pong"))
                elif command.action == "subscribe":
                    await self._subscribe(command)
                else:
                    self._unsubscribe(command)
            except CommandError as exc:
                self.send(error_frame(exc.code, exc.message, exc.fields))
            except ApiError as exc:
                self.send(error_frame(exc.code, exc.message, exc.fields))
            except Exception as exc:
                # MongoDB unreachable during the owner check, or a bug: the socket stays usable.
                log.error("WebSocket command failed (%s)", type(exc).__name__, exc_info=True)
                self.send(error_frame("unavailable", "The command could not be completed now; retry."))

    async def _subscribe(self, command: Command) -> None:
        if command.channel_id is not None:
            kind, target = "channel", command.channel_id
            channel = await self.inbox.owned_channel(self.principal, command.channel_id)
            channel_id, conversation_id = str(channel["_id"]), None
        else:
            assert command.conversation_id is not None
            kind, target = "conversation", command.conversation_id
            conversation = await self.inbox.owned_conversation(self.principal, command.conversation_id)
            channel_id, conversation_id = str(conversation["channel_id"]), str(conversation["_id"])
        key = (kind, target)
        if key not in self.subscriptions and len(self.subscriptions) >= MAX_SUBSCRIPTIONS:
            raise CommandError("too_many_subscriptions", f"A socket may follow at most {MAX_SUBSCRIPTIONS} streams.")
        if self.closed:
            return
        held: list[Held] = []
        self._holding[channel_id] = held
        try:
            self.subscriptions[key] = channel_id
            epoch, position = await self.hub.attach(self, channel_id, conversation_id)
            if self.closed:
                return
            self.send(_event("subscribed", **{f"{kind}_id": target}, latest_seq=position, epoch=epoch))
            if command.since_seq is not None:
                await self._replay(channel_id, conversation_id, command, epoch, position)
        finally:
            self._holding.pop(channel_id, None)
        for item in held:
            if item.seq is None or position is None or item.seq > position:
                self.send(item.data, item.received_at)

    async def _replay(
        self, channel_id: str, conversation_id: str | None, command: Command, epoch: str | None, position: int | None
    ) -> None:
        since = command.since_seq
        assert since is not None
        if epoch is None or position is None:
            # The log cannot be read now (Redis unreachable): the client must reload by REST.
            return
        stored = None
        if command.epoch == epoch and since <= position:
            try:
                stored = await self.hub.replay(channel_id, epoch, since, position)
            except Exception as exc:
                log.warning("replay read failed (%s)", type(exc).__name__)
        if stored is None:
            self.send(
                control_envelope(
                    RESYNC_REQUIRED,
                    channel_id,
                    conversation_id,
                    position,
                    {"latest_seq": position, "epoch": epoch},
                    time.time(),
                )
            )
            return
        for item in stored:
            if conversation_id is None or item.conversation_id == conversation_id:
                self.send(item.envelope)

    def _unsubscribe(self, command: Command) -> None:
        kind = "channel" if command.channel_id is not None else "conversation"
        target = command.channel_id or command.conversation_id
        assert target is not None
        channel_id = self.subscriptions.pop((kind, target), None)
        if channel_id is not None:
            self.hub.detach(self, channel_id, target if kind == "conversation" else None)
        self.send(_event("unsubscribed", **{f"{kind}_id": target}))
