"""Echo dedup: an outbound message is stored once, whatever order its echo and its mark-sent arrive in.

Owns DESIGN.md's properties P1–P5 on the *echo* side (the webhook's owner messages) and the
pairing decision both sides share (mark-sent, :mod:`server.dedup.marksent`, is the other side):

* :func:`register_echo` / :func:`register_send` — pure functions that decide, from one
  ``echo_pairs`` document (:mod:`models.echo_pairs`), which echo belongs to which send. They
  run inside a compare-and-swap, so across processes exactly one side sees the other.
* :class:`EchoPairing` — runs them against MongoDB (the single atomic decision).
* :class:`SentMarks` — the seed's Redis keys (``instagram_sent_msg_<md5>`` counter and
  ``instagram_sent_mid_<mid>``). They only *name* the layer and feed the echo-delay metric;
  MongoDB decides. Every Redis error is logged, counted and ignored (P4).
* :class:`EchoDedup` — the ingest pipeline's ``owner_messages`` hook: ``mid`` → pairing
  (``cache``/``database``) → store as an Instagram-app message.

After the decision, every collision is a unique-index violation that the loser merges into
the winner: the echo of a send is inserted with the send's ``send_id`` (unique ``pair_key``),
or its mid is added to the send's message; a send whose echo came first collides with the
echo's message and *adopts* it. See ``docs/dedup.md`` for the full argument.
"""

from __future__ import annotations

import copy
import datetime as dt
import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from bson import ObjectId
from pymongo.errors import DuplicateKeyError
from redis.exceptions import RedisError

from models.echo_pairs import EchoPairContention, EchoPairRepository
from models.messages import SOURCE_INSTAGRAM_DIRECT
from models.store import Store
from server.ingest.recorder import MessageRecorder, Recorded
from server.ops.metrics import Metrics

log = logging.getLogger("igsync.dedup")

LAYER_MID = "mid"
LAYER_CACHE = "cache"
LAYER_DATABASE = "database"
LAYER_ADOPTED = "adopted"

# One (conversation, text) document keeps at most this many sends and echoes of the window;
# only a flood of one identical text in one conversation could reach it.
MAX_ENTRIES = 500
# Joining an echo to its send's message: each retry means the other side just wrote.
MAX_JOIN_ATTEMPTS = 16
# After a Redis failure the hints are skipped this long, so a dead Redis costs one timeout
# per second per process, not one per webhook.
REDIS_BACKOFF_SECS = 1.0


# -- the pairing decision (pure) -------------------------------------------------------


@dataclass(frozen=True)
class EchoMatch:
    """Where an echo belongs. ``send_id`` None: no send claims it — an Instagram-app message."""

    send_id: str | None
    by_mid: bool  # the send listed this mid (Send API id): exact
    first: bool  # the first registration of this mid (False: a redelivery or a concurrent twin)
    send_at: float | None  # when the send registered (echo delay)


@dataclass(frozen=True)
class SendMatch:
    """The echoes already paired with a send when it registered (the echo came first)."""

    echo_mids: tuple[str, ...]
    first: bool


def pair_document_key(conversation_id: ObjectId, content_hash: str) -> str:
    return f"{conversation_id}:{content_hash}"


def prune(doc: dict[str, Any] | None, horizon: float) -> dict[str, list[dict[str, Any]]]:
    """A copy of the document's state without entries older than ``horizon``: an old send
    never pairs with a new message (P3), an old unmatched echo is not adopted any more."""
    doc = doc or {}
    sends = [copy.deepcopy(s) for s in doc.get("sends") or [] if s["at"] >= horizon]
    echoes = [copy.deepcopy(e) for e in doc.get("echoes") or [] if e["at"] >= horizon]
    return {"sends": sends[-MAX_ENTRIES:], "echoes": echoes[-MAX_ENTRIES:]}


def register_echo(
    doc: dict[str, Any] | None, mid: str, *, now: float, window_secs: float
) -> tuple[dict[str, Any] | None, EchoMatch]:
    """Register echo ``mid``: the new state (None if unchanged) and where the echo belongs.

    Idempotent: a mid registered before gets its earlier answer, so concurrent redeliveries
    agree. Otherwise the send that listed this mid wins; else the oldest send without mids
    that has no echo yet (each send absorbs exactly one echo, P3); else no send.
    """
    state = prune(doc, now - window_secs)
    for echo in state["echoes"]:
        if echo["mid"] == mid:
            return None, EchoMatch(echo["send"], echo["by_mid"], first=False, send_at=echo["send_at"])
    send = next((s for s in state["sends"] if mid in s["mids"]), None)
    by_mid = send is not None
    if send is None:
        send = next((s for s in state["sends"] if not s["mids"] and not s["echoes"]), None)
    entry = {"mid": mid, "at": now, "send": None, "by_mid": by_mid, "send_at": None}
    if send is not None:
        _pair(send, entry)
    state["echoes"].append(entry)
    return state, EchoMatch(entry["send"], by_mid, first=True, send_at=entry["send_at"])


def register_send(
    doc: dict[str, Any] | None, send_id: str, mids: list[str], *, now: float, window_secs: float
) -> tuple[dict[str, Any] | None, SendMatch]:
    """Register send ``send_id`` (idempotent): the new state and the echoes it pairs with now.

    With mids it takes only the unpaired echoes whose mid it lists (exact). Without mids it
    takes the oldest unpaired echo, if any — that echo arrived first and will be adopted.
    """
    state = prune(doc, now - window_secs)
    for send in state["sends"]:
        if send["id"] == send_id:
            return None, SendMatch(tuple(send["echoes"]), first=False)
    send = {"id": send_id, "mids": list(mids), "at": now, "echoes": []}
    unpaired = [e for e in state["echoes"] if e["send"] is None]
    if mids:
        for echo in unpaired:
            if echo["mid"] in mids:
                echo["by_mid"] = True
                _pair(send, echo)
    elif unpaired:
        _pair(send, unpaired[0])
    state["sends"].append(send)
    return state, SendMatch(tuple(send["echoes"]), first=True)


def _pair(send: dict[str, Any], echo: dict[str, Any]) -> None:
    echo["send"] = send["id"]
    echo["send_at"] = send["at"]
    send["echoes"].append(echo["mid"])


class EchoPairing:
    """The pairing decisions against MongoDB: one compare-and-swap on one document each."""

    def __init__(self, repo: EchoPairRepository, *, window_secs: float, clock: Callable[[], float] = time.time) -> None:
        self.repo = repo
        self.window_secs = window_secs
        # Injected so tests can move time past the window without sleeping.
        self.clock = clock

    def _expiry(self, now: float) -> dt.datetime:
        # Idle documents hold nothing the decision would keep: expire them after the window.
        return dt.datetime.fromtimestamp(now + 2 * self.window_secs, tz=dt.UTC)

    async def register_echo(self, conversation_id: ObjectId, content_hash: str, mid: str) -> EchoMatch:
        # The clock is read inside the decision: ``at`` is the time of the attempt that won.
        return await self.repo.transact(
            pair_document_key(conversation_id, content_hash),
            lambda doc: register_echo(doc, mid, now=self.clock(), window_secs=self.window_secs),
            expires_at=self._expiry(self.clock()),
        )

    async def register_send(
        self, conversation_id: ObjectId, content_hash: str, send_id: str, mids: list[str]
    ) -> SendMatch:
        return await self.repo.transact(
            pair_document_key(conversation_id, content_hash),
            lambda doc: register_send(doc, send_id, mids, now=self.clock(), window_secs=self.window_secs),
            expires_at=self._expiry(self.clock()),
        )


# -- the seed's Redis keys: hints, never the judge ---------------------------------------

# Decrement a counter only while it is positive (one echo per outstanding send); 1 if it was.
_TAKE_SEND_LUA = """
local n = tonumber(redis.call('GET', KEYS[1]) or '0')
if n and n > 0 then
  redis.call('DECR', KEYS[1])
  return 1
end
return 0
"""


def sent_message_key(conversation_id: ObjectId | str, content: str) -> str:
    """The seed's key: ``instagram_sent_msg_<md5("<conversation_id>:<content>")>``."""
    digest = hashlib.md5(f"{conversation_id}:{content}".encode()).hexdigest()
    return f"instagram_sent_msg_{digest}"


def sent_mid_key(mid: str) -> str:
    return f"instagram_sent_mid_{mid}"


class SentMarks:
    """mark-sent's Redis marks and the echo's atomic take of them.

    The counter is incremented by mark-sent once MongoDB knows the send (its pairing
    registration) and decremented (only while positive) by the echo that MongoDB paired with a
    send: it says whether a send was outstanding — layer ``cache`` — and the seed's dashboards
    keep working. The per-mid key
    holds the send time, for ``igsync_echo_delay_seconds`` of echoes matched by mid.
    """

    def __init__(
        self,
        redis: aioredis.Redis,
        metrics: Metrics,
        *,
        ttl_secs: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.redis = redis
        self.metrics = metrics
        self.ttl_secs = ttl_secs
        self._clock = clock
        self._skip_until = 0.0
        self._take_send = redis.register_script(_TAKE_SEND_LUA)

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        await self.redis.aclose()

    def _available(self) -> bool:
        return self._clock() >= self._skip_until

    def _failed(self, what: str, exc: BaseException) -> None:
        self.metrics.store_errors.labels(store="redis").inc()
        self._skip_until = self._clock() + REDIS_BACKOFF_SECS
        log.warning(
            "Redis %s failed (%s); dedup hints off for %.0fs, MongoDB decides alone",
            what,
            type(exc).__name__,
            REDIS_BACKOFF_SECS,
        )

    async def mark(self, conversation_id: ObjectId, content: str, mids: list[str], *, outstanding: bool) -> None:
        """After mark-sent's registration in MongoDB: one more outstanding send of this text, and its mids."""
        if not self._available() or not (outstanding or mids):
            return
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                if outstanding:
                    key = sent_message_key(conversation_id, content)
                    pipe.incr(key)
                    pipe.expire(key, self.ttl_secs)
                for mid in mids:
                    pipe.set(sent_mid_key(mid), repr(time.time()), ex=self.ttl_secs)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            self._failed("mark", exc)

    async def take_mid(self, mid: str, conversation_id: ObjectId, content: str) -> float | None:
        """An echo whose mid was given to mark-sent: the send time, once (None otherwise)."""
        if not self._available():
            return None
        try:
            raw = await self.redis.getdel(sent_mid_key(mid))
            if raw is None:
                return None
            # The send is answered by this echo: it is no longer outstanding.
            await self._take_send(keys=[sent_message_key(conversation_id, content)])
            return float(raw)
        except (RedisError, OSError) as exc:
            self._failed("take_mid", exc)
        except ValueError:
            return None
        return None

    async def take_send(self, conversation_id: ObjectId, content: str) -> bool:
        """Whether the counter said a send of this text was outstanding (and take it)."""
        if not self._available():
            return False
        try:
            return bool(await self._take_send(keys=[sent_message_key(conversation_id, content)]))
        except (RedisError, OSError) as exc:
            self._failed("take_send", exc)
            return False


# -- the echo path of the webhook ------------------------------------------------------


def is_native_looking(message: dict[str, Any]) -> bool:
    """Stored as typed in the Instagram app (not, or not yet, an outbound message of ours)."""
    return message.get("source") == SOURCE_INSTAGRAM_DIRECT and "merged_into" not in message


class EchoDedup:
    """``IngestPipeline.owner_messages``: store an owner message once, or recognise it.

    Returns ``(recorded, layer)``: layer None when the message was stored now, else the dedup
    layer that recognised it (``mid``, ``cache`` or ``database``).
    """

    def __init__(
        self,
        store: Store,
        recorder: MessageRecorder,
        pairing: EchoPairing,
        marks: SentMarks,
        metrics: Metrics,
    ) -> None:
        self.store = store
        self.recorder = recorder
        self.pairing = pairing
        self.marks = marks
        self.metrics = metrics

    async def store_owner_message(self, message: dict[str, Any], *, received_at: float) -> tuple[Recorded, str | None]:
        mid = message["mid"]
        conversation_id = message["conversation_id"]
        # 1. mid: a redelivery, or the echo of a mid given to mark-sent (unique index).
        sent_at = await self.marks.take_mid(mid, conversation_id, message["content"])
        existing = await self.store.messages.find_by_mid(message["channel_id"], mid)
        if existing is not None:
            if sent_at is not None:
                self.metrics.echo_delay.observe(max(0.0, time.time() - sent_at))
            return await self.recorder.complete(existing, received_at=received_at), LAYER_MID
        # 2. the pairing document: does a send of this text in this conversation claim it?
        match = await self.pairing.register_echo(conversation_id, message["content_hash"], mid)
        if match.send_id is None:
            # 3. an Instagram-app message. A concurrent send that paired with it may have
            #    stored it already (with this mid): then the index answers "duplicate".
            recorded = await self.recorder.record(message, received_at=received_at)
            return recorded, (LAYER_MID if recorded.duplicate else None)
        if match.first and match.send_at is not None:
            self.metrics.echo_delay.observe(max(0.0, self.pairing.clock() - match.send_at))
        if match.by_mid or not match.first:
            layer = LAYER_MID
        elif await self.marks.take_send(conversation_id, message["content"]):
            layer = LAYER_CACHE
        else:
            layer = LAYER_DATABASE
        return await self._join_send(message, match.send_id, layer, received_at)

    async def _join_send(
        self, message: dict[str, Any], send_id: str, layer: str, received_at: float
    ) -> tuple[Recorded, str | None]:
        """Merge the echo into its send's message, or store it under the send's ``send_id``
        when the send's message does not exist yet (mark-sent then collides and adopts it)."""
        mid = message["mid"]
        for _ in range(MAX_JOIN_ATTEMPTS):
            try:
                holder = await self.store.messages.absorb_mid(
                    message["channel_id"], message["conversation_id"], send_id, mid
                )
            except DuplicateKeyError:
                holder = await self.store.messages.find_by_mid(message["channel_id"], mid)
                if holder is None:
                    continue
                return await self.recorder.complete(holder, received_at=received_at), LAYER_MID
            if holder is not None:
                # The send's own message, or (a concurrent twin of this echo stored it) the echo's;
                # finished here if its writer stopped half-way (conversation not updated yet).
                recorded = await self.recorder.complete(holder, received_at=received_at)
                return recorded, (LAYER_MID if is_native_looking(holder) else layer)
            try:
                recorded = await self.recorder.record({**message, "send_id": send_id}, received_at=received_at)
            except DuplicateKeyError:
                continue  # the send's message appeared in between (pair_key): absorb into it
            return recorded, (LAYER_MID if recorded.duplicate else None)
        raise EchoPairContention(f"echo {mid} could not be joined to send {send_id}; retry")
