"""The seed's Redis keys of echo dedup: hints, never the judge.

:class:`SentMarks` keeps ``instagram_sent_msg_<md5>`` (a counter per conversation and text)
and ``instagram_sent_mid_<mid>``. They only *name* the layer that recognised an echo and feed
the echo-delay metric; MongoDB decides (:mod:`server.dedup.pairing`). Every Redis error is
logged, counted and ignored (P4), and skipped for ``REDIS_BACKOFF_SECS`` after it.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import redis.asyncio as aioredis
from bson import ObjectId
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisError

from server.ops.metrics import Metrics

log = logging.getLogger("igsync.dedup")

# After a Redis failure the hints are skipped this long, so a dead Redis costs one timeout
# per second per process, not one per webhook.
REDIS_BACKOFF_SECS = 1.0
# Decrement a counter only while it is positive (one echo per outstanding send); 1 if it was.
_TAKE_SEND_LUA = """
local n = tonumber(redis.call('GET', KEYS[1]) or '0')
if n and n > 0 then
  redis.call('DECR', KEYS[1])
  return 1
end
return 0
"""
# The echo's hints in one command where one script may touch both keys (not on a Redis Cluster,
# where they live in different slots and a pipeline takes them): take the mid's send time, read
# the text's counter, and when the mid was given, count its send answered (as _TAKE_SEND_LUA).
# KEYS: the mid's key, the text's counter.  Returns {send time or nil, counter before or nil}.
_TAKE_MID_LUA = """
local sent = redis.call('GET', KEYS[1])
if sent then
  redis.call('DEL', KEYS[1])
end
local n = redis.call('GET', KEYS[2])
if sent and (tonumber(n or '0') or 0) > 0 then
  redis.call('DECR', KEYS[2])
end
return {sent or false, n or false}
"""


@dataclass(frozen=True)
class EchoHints:
    """What Redis knows of an echo before MongoDB decides (hints only, never the decision)."""

    sent_at: float | None  # when mark-sent gave this mid (it was taken now); None: not given
    # A send of this text in this conversation may be waiting for its echo (the counter is
    # positive, or Redis could not say): its pairing document then surely exists.
    send_outstanding: bool


UNKNOWN_HINTS = EchoHints(None, True)


def _positive(raw: bytes | str | None) -> bool:
    try:
        return raw is not None and int(raw) > 0
    except ValueError:
        return True


def sent_message_key(conversation_id: ObjectId | str, content: str) -> str:
    """The seed's key: ``instagram_sent_msg_<md5("<conversation_id>:<content>")>``."""
    digest = hashlib.md5(f"{conversation_id}:{content}".encode()).hexdigest()
    return f"instagram_sent_msg_{digest}"


def sent_mid_key(mid: str) -> str:
    """The Redis key that names a mid given to mark-sent."""
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
        self._take_mid = None if isinstance(redis, RedisCluster) else redis.register_script(_TAKE_MID_LUA)

    async def start(self) -> None:
        """Nothing to start: the client connects on first use."""
        return None

    async def stop(self) -> None:
        """Close the hints' Redis client."""
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

    async def take_mid(self, mid: str, conversation_id: ObjectId, content: str) -> EchoHints:
        """What Redis says of an echo, in one round trip (two on a Cluster when the mid was
        given): the send time of a mark-sent that gave this mid (taken once), and whether a send
        of this text is outstanding."""
        if not self._available():
            return UNKNOWN_HINTS
        counter = sent_message_key(conversation_id, content)
        try:
            if self._take_mid is not None:
                raw, outstanding = await self._take_mid(keys=[sent_mid_key(mid), counter])
                if raw is None:
                    return EchoHints(None, _positive(outstanding))
                return EchoHints(float(raw), True)
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.getdel(sent_mid_key(mid))
                pipe.get(counter)
                raw, outstanding = await pipe.execute()
            if raw is None:
                return EchoHints(None, _positive(outstanding))
            # The send is answered by this echo: it is no longer outstanding.
            await self._take_send(keys=[counter])
            return EchoHints(float(raw), True)
        except (RedisError, OSError) as exc:
            self._failed("take_mid", exc)
        except ValueError:
            return EchoHints(None, True)
        return UNKNOWN_HINTS

    async def take_send(self, conversation_id: ObjectId, content: str) -> bool:
        """Whether the counter said a send of this text was outstanding (and take it)."""
        if not self._available():
            return False
        try:
            return bool(await self._take_send(keys=[sent_message_key(conversation_id, content)]))
        except (RedisError, OSError) as exc:
            self._failed("take_send", exc)
            return False
