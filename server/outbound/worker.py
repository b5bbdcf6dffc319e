"""The send worker: pending messages to Instagram, each part once, whatever fails on the way.

Owns the queue side of sending through igsync (:mod:`server.outbound.service` is the request
side). A worker takes a pending message with a lease (:mod:`models.outbound`), sends each
part that has no ``mid`` yet with the channel's token (``HUMAN_AGENT``-tagged when the window
decided so), records each returned ``mid`` on the message, then publishes ``message_updated``
(``delivery_status``) and takes the message off the queue.

Why each step is where it is:

* **Before a part goes out its attempt is written** (``attempted_at``). A worker that dies
  after Instagram accepted the part but before the ``mid`` was recorded leaves that mark; its
  successor (after the lease) first looks for the part's echo — the pairing gave the echo's
  mid to this message, or, for an attachment, an Instagram-app message of that type appeared
  in the conversation since the attempt — and takes it instead of sending again.
* **A ``mid`` that another message already holds** is the part's echo, stored as an
  Instagram-app message because it beat Instagram's answer and nothing paired it (an
  attachment): that message is merged into this one (``message_deleted``), never left as a
  second copy.
* **The final event is published before the queue entry is finished**, under a once key: a
  worker that dies between the two leaves the message pending, its successor finds every part
  sent and publishes again, and the event log keeps one copy.
* **Errors**: Meta's rate limits and outages (codes 1, 2, 4, 17, 32, 341, 613, HTTP 5xx,
  timeouts) are retried with exponential backoff up to ``IGSYNC_SEND_MAX_ATTEMPTS``; anything
  else ends the send as ``failed`` with ``delivery_error``; 190 also marks the channel
  ``needs_reauth``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import math
import time
import uuid
from typing import Any

from pymongo.errors import DuplicateKeyError, PyMongoError

from models.messages import OUTBOUND_TYPES
from models.messaging_window import MODE_HUMAN_AGENT
from models.outbound import FAILED, SENT
from models.store import Store
from models.timeutil import utcnow
from server.dedup.echo import is_native_looking
from server.graph.client import TOKEN_EXPIRED, TRANSIENT, GraphAccount, GraphApiClient, GraphApiError
from server.graph.health import ChannelHealth
from server.inbox import events as ev
from server.inbox.events import SafePublisher
from server.ops.loops import PoolIdleWait, cancelling
from server.ops.metrics import Metrics
from server.outbound.limiter import SendLimiter

log = logging.getLogger("igsync.send")
# The queue-depth gauge is counted at most this often (scrapes come every 15–30 s; counting
# after every idle poll was one command a second per process for nothing).
QUEUE_GAUGE_SECS = 5.0

# An echo of an attachment that came while its sender died is looked for from this long before
# the attempt was written (clocks of two processes).
ECHO_SLACK = dt.timedelta(seconds=5)
# How far back a send of the same text is looked for when an echo may have crossed to it.
CROSSED_LOOKBACK = dt.timedelta(minutes=10)
# Recording a mid races the echo side and crossed sends; each retry means one of them just wrote.
MAX_RECORD_TRIES = 8


class SendAborted(Exception):
    """The claim is no longer ours (the lease ran out and another worker took the message)."""


def meta_message(part: dict[str, Any], reply_to_mid: str | None) -> dict[str, Any]:
    """Meta's message object for one part."""
    if part["kind"] == "text":
        message: dict[str, Any] = {"text": part["text"]}
    else:
        message = {"attachment": {"type": part["kind"], "payload": {"url": part["url"]}}}
    if reply_to_mid:
        message["reply_to"] = {"mid": reply_to_mid}
    return message


def backoff_secs(attempt: int, base_secs: float, cap_secs: float = 600.0) -> float:
    """Seconds before attempt ``attempt + 1``: doubling from ``base_secs``, at most ``cap_secs``."""
    return float(min(cap_secs, base_secs * (2 ** max(attempt - 1, 0))))


class SendWorker:
    def __init__(
        self,
        store: Store,
        graph: GraphApiClient,
        publisher: SafePublisher,
        metrics: Metrics,
        *,
        concurrency: int,
        lease_secs: float,
        max_attempts: int,
        retry_base_secs: float,
        poll_secs: float,
        limiter: SendLimiter,
        health: ChannelHealth,
    ) -> None:
        self.store = store
        self.health = health
        self.graph = graph
        self.publisher = publisher
        self.metrics = metrics
        self.concurrency = concurrency
        self.lease_secs = lease_secs
        self.max_attempts = max_attempts
        self.retry_base_secs = retry_base_secs
        self.poll_secs = poll_secs
        self.limiter = limiter
        self.owner = f"send-{uuid.uuid4().hex[:12]}"
        self._wake = asyncio.Event()
        self._idle = PoolIdleWait(self._wake, poll_secs)
        self._gauged_at = -math.inf
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        """Start ``concurrency`` loops (none: this process only queues; others send)."""
        self._stopping = False
        self._tasks = [asyncio.create_task(self._loop(), name=f"send-{n}") for n in range(self.concurrency)]

    async def stop(self) -> None:
        """Stop taking sends: each loop finishes the call it is in (bounded by the store's and
        the Graph API's timeouts) and exits. Not cancelled first: a cancellation that lands in
        PyMongo's server selection can leave its topology lock held (seen: the client's close()
        then waits forever). A loop still busy after the wait is cancelled; its send's lease
        hands it to another process."""
        self._stopping = True
        self._wake.set()
        if self._tasks:
            _, busy = await asyncio.wait(self._tasks, timeout=self.lease_secs)
            for task in busy:
                task.cancel()
        self._tasks = []
        self.graph.close()

    def wake(self) -> None:
        """A send was queued: look now instead of at the next poll."""
        self._wake.set()

    async def _loop(self) -> None:
        while not self._stopping and not cancelling():
            # Cleared before claiming: a send queued after this point sets it again, so the
            # wait below cannot miss it (clearing after an empty claim could). A peer's clear
            # cannot take a wake from this loop either: set() resolves every waiter at once.
            self._wake.clear()
            try:
                if await self.run_once():
                    continue
                if time.monotonic() - self._gauged_at >= QUEUE_GAUGE_SECS:
                    self._gauged_at = time.monotonic()
                    self.metrics.send_queue_depth.set(await self.store.outbound.queue_depth())
            except PyMongoError as exc:
                log.warning("send worker: MongoDB failed (%s); trying again", type(exc).__name__)
            except Exception:
                # A bug must not end the loop for good (the send stays queued; its lease expires).
                log.exception("send worker: a send failed unexpectedly")
            await self._idle.wait()

    # -- one send ----------------------------------------------------------------------

    async def run_once(self) -> bool:
        """Take one due send and carry it as far as it goes; False when there was none."""
        message = await self.store.outbound.claim(self.owner, self.lease_secs)
        if message is None:
            return False
        self._wake.set()  # the pool's idle loops look too: there may be more
        try:
            await self.deliver(message)
        except SendAborted:
            log.info("send: message=%s was taken over by another worker", message["_id"])
        return True

    async def deliver(self, message: dict[str, Any]) -> None:
        """Send every part still without a ``mid``, then finish the message."""
        channel = await self.store.channels.get(message["channel_id"])
        account = None if channel is None else GraphAccount.of(channel)
        if channel is None or not channel.get("is_connect") or account is None:
            await self._fail(message, {"code": None, "message": "The channel is not connected (no access token)."})
            return
        if channel.get("needs_reauth"):
            await self._fail(
                message, {"code": 190, "message": "The channel needs re-authorisation."}, awaiting_reauth=True
            )
            return
        recipient = message["send"].get("recipient")
        if not recipient:  # queued before the recipient was kept on the send
            recipient = ((await self.store.customers.get(message["customer_id"], message["channel_id"])) or {}).get(
                "instagram_id"
            )
        if not recipient:
            await self._fail(message, {"code": None, "message": "The customer has no Instagram id."})
            return
        send = message["send"]
        for index, part in enumerate(send["parts"]):
            if part.get("mid"):
                continue
            if part.get("attempted_at") and await self._take_echo(message, index, part):
                continue
            if not await self.store.outbound.part_attempted(message, index, utcnow(), self.lease_secs):
                raise SendAborted()
            await self.limiter.acquire(str(message["channel_id"]), part["kind"])
            tag = MODE_HUMAN_AGENT if send.get("mode") == MODE_HUMAN_AGENT else None
            reply_to = send.get("reply_to_mid") if index == 0 else None
            try:
                mid = await self.graph.send_message(account, recipient, meta_message(part, reply_to), tag=tag)
            except GraphApiError as exc:
                await self._graph_failed(message, channel, exc)
                return
            await self._record(message, index, mid)
        await self._sent(message)

    # -- recording -----------------------------------------------------------------------

    async def _record(self, message: dict[str, Any], index: int, mid: str) -> None:
        """Part ``index`` is on Instagram as ``mid``: on the part, and among the message's mids.

        Another message may hold the mid already. Its echo beat the answer and nothing paired it
        (an attachment): that Instagram-app message is merged into this one. Or two sends of one
        text were outstanding in the conversation and their echoes, paired by text, crossed:
        Instagram's answer says whose mid it is, so the other message gives it up."""
        message["send"]["parts"][index]["mid"] = mid
        await self.store.outbound.part_sent(message, index, mid)
        for _ in range(MAX_RECORD_TRIES):
            try:
                updated = await self.store.messages.add_mids(message, [mid])
            except DuplicateKeyError:
                holder = await self.store.messages.find_by_mid(message["channel_id"], mid)
                if holder is None or holder["_id"] == message["_id"]:
                    continue  # it moved meanwhile: try again
                if is_native_looking(holder):
                    await self._merge_echo(message, holder)
                    return
                if holder.get("type") in OUTBOUND_TYPES and "merged_into" not in holder:
                    await self.store.messages.release_mid(holder, mid)
                    continue
                return  # held by a message we must not touch (merged away): the part keeps it
            if updated is not None:
                message["mids"], message["mid"] = updated.get("mids", []), updated.get("mid")
            return

    async def _take_echo(self, message: dict[str, Any], index: int, part: dict[str, Any]) -> bool:
        """A predecessor sent this part and died: its echo, if it came, stands for it."""
        current = await self.store.messages.get(message["_id"], message["channel_id"]) or message
        taken = {p.get("mid") for p in current["send"]["parts"] if p.get("mid")}
        spare = [m for m in current.get("mids") or [] if m not in taken]
        if part["kind"] == "text" and spare:
            await self._record(message, index, spare[0])
            return True
        if part["kind"] == "text":
            # Its echo may have been paired with another send of the same text (they cross when
            # both echoes beat both answers): an unanswered mid there stands for this part too.
            crossed = await self._crossed_echo(current, part)
            if crossed is not None:
                await self._record(message, index, crossed)
                return True
        if part["kind"] != "text":
            since = part["attempted_at"] - ECHO_SLACK
            echo = await self.store.messages.native_since(
                message["channel_id"], message["conversation_id"], since, part["kind"]
            )
            if echo is not None and echo.get("mid"):
                await self._record(message, index, echo["mid"])
                return True
        return False

    async def _crossed_echo(self, message: dict[str, Any], part: dict[str, Any]) -> str | None:
        since = part["attempted_at"] - CROSSED_LOOKBACK
        for other in await self.store.messages.recent_in_conversation(
            message["channel_id"], message["conversation_id"], since
        ):
            if other["_id"] == message["_id"] or other.get("content_hash") != message.get("content_hash"):
                continue
            if not other.get("send"):
                continue  # a mark-sent message: its mids were reported by its sender
            answered = {p.get("mid") for p in (other.get("send") or {}).get("parts") or []}
            for mid in other.get("mids") or []:
                if mid not in answered and await self.store.messages.release_mid(other, mid):
                    return mid
        return None

    async def _merge_echo(self, message: dict[str, Any], echo: dict[str, Any]) -> None:
        folded = await self.store.messages.merge_into(echo["_id"], message["_id"], message["channel_id"])
        if folded is None:
            return
        self.metrics.duplicates.labels(layer="adopted").inc()
        events = [ev.message_deleted(folded)]
        conversation = await self.store.conversations.refresh_last_message(
            message["conversation_id"], message, replacing=folded["_id"]
        )
        if conversation is not None:
            events.append(ev.conversation_updated(conversation))
        await self.publisher.publish(events)

    # -- outcomes ------------------------------------------------------------------------

    async def _sent(self, message: dict[str, Any]) -> None:
        final = {**message, "delivery_status": SENT, "delivery_error": None}
        event = ev.message_updated(final, ["delivery_status", "mid"])
        event.once = f"send:{message['_id']}:sent"
        # Published before the queue entry is finished: see the module docstring.
        await self.publisher.publish([event])
        if await self.store.outbound.finish(message["_id"], SENT, channel_id=message["channel_id"]):
            self.metrics.sends.labels(outcome="sent").inc()
            created = message.get("created_at")
            if created is not None:
                self.metrics.send_duration.observe(max(0.0, (utcnow() - created).total_seconds()))
            log.info("send: sent message=%s parts=%d", message["_id"], len(message["send"]["parts"]))

    async def _fail(self, message: dict[str, Any], error: dict[str, Any], *, awaiting_reauth: bool = False) -> None:
        final = {**message, "delivery_status": FAILED, "delivery_error": error}
        event = ev.message_updated(final, ["delivery_status", "delivery_error"])
        event.once = f"send:{message['_id']}:failed:{message['send'].get('claims', 0)}"
        await self.publisher.publish([event])
        waiting = message["channel_id"] if awaiting_reauth else None
        if await self.store.outbound.finish(
            message["_id"], FAILED, error, awaiting_reauth=waiting, channel_id=message["channel_id"]
        ):
            self.metrics.sends.labels(outcome="failed").inc()
            log.warning("send: failed message=%s code=%s: %s", message["_id"], error.get("code"), error.get("message"))

    async def _graph_failed(self, message: dict[str, Any], channel: dict[str, Any], exc: GraphApiError) -> None:
        error = {"code": exc.code, "message": exc.detail or exc.category}
        if exc.category == TOKEN_EXPIRED and await self.health.token_rejected(channel, by="send"):
            refused = {**error, "message": "Instagram refused the channel's token (re-authorise it)."}
            await self._fail(message, refused, awaiting_reauth=True)
            return
        attempts = int(message["send"].get("attempts", 0)) + 1
        # Meta's outages answer 5xx with all kinds of codes: always worth another try.
        # (A token refused after the channel got a new one counts as transient: the next try
        # reads the channel again.)
        transient = exc.category in (TRANSIENT, TOKEN_EXPIRED) or (exc.http_status or 0) >= 500
        if transient and attempts < self.max_attempts:
            due = utcnow() + dt.timedelta(seconds=backoff_secs(attempts, self.retry_base_secs))
            if not await self.store.outbound.retry_later(message, due, error):
                raise SendAborted()
            self.metrics.sends.labels(outcome="retry").inc()
            log.info("send: retry message=%s attempt=%d code=%s", message["_id"], attempts, exc.code)
            return
        if transient:
            error["message"] = f"Instagram did not accept it after {attempts} attempts: {error['message']}"
        await self._fail(message, error)
