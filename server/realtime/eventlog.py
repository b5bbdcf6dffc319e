"""The per-channel event log in Redis: keys, the Lua scripts, envelopes, replay reads.

Owns the storage side of API.md §4's ``seq``/``epoch``:

* three keys per channel, all carrying the ``{channel_id}`` hash tag so that a Redis
  Cluster keeps them in one slot (a Lua script may only touch keys of one slot):
  ``igsync:rt:{<channel_id>}:epoch`` (string), ``…:seq`` (counter), ``…:log`` (stream);
  and one pub/sub channel ``igsync:rt:{<channel_id>}:live`` — a *shard* channel on a Redis
  Cluster (``SPUBLISH``), so the publish stays on the shard that holds the log;
* :data:`APPEND_LUA`: for a batch of events, ``INCR`` the counter, ``XADD`` the envelope
  with ``MAXLEN ~ N`` under the entry id ``<seq>-0`` (so a replay is one ``XRANGE`` by
  seq), and ``PUBLISH`` it — atomically, so ``seq`` rises by one per event across every
  process and the stream never lacks an event that was published;
* the *epoch*: a random id written when a channel's log is first used. When the keys are
  gone (Redis flushed, replaced, or the log expired after ``ws_log_ttl_secs`` idle) the
  next use writes a new epoch and restarts ``seq`` at 1, so an old ``since_seq`` can be
  told apart from a new one and answered ``resync_required``, never with wrong events.
  A failover renews it too (:data:`RENEW_LUA`): a promoted replica may lack the last events
  its master logged, and the seqs it hands out next would name other events.

An envelope is the exact JSON text a socket receives. The core's :class:`~server.inbox.events.Event`
has no ``seq`` yet, so it is encoded as a *head* (up to ``"seq":``) and a *tail*, and the
script splices the number in: the stream and pub/sub carry final bytes, and no process
re-encodes an event per socket.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Any

import orjson
import redis.asyncio as aioredis

from models.timeutil import from_epoch_ms, iso
from server.inbox.events import Event

KEY_PREFIX = "igsync:rt:"
# Subscribed by every process that runs a hub, so its pub/sub connection always exists
# (and a reconnect is noticed) even while no socket subscribes to any channel.
CONTROL_CHANNEL = b"igsync:rt:control"

# KEYS: epoch, seq, log, then one "once" key per distinct once-key of the batch.  ARGV:
# candidate epoch, maxlen, ttl ms, pub/sub channel, once ttl ms, then (head, tail, received_at,
# conversation_id or '', splice flag, event id, index of its once key in KEYS or 0) per event.
# Returns {epoch, seq of each event} with 0 for an event skipped because its once key was
# already set: the fact it announces went out before (a redelivery re-publishing a message
# whose events were already logged). A once key is decided by its first event in the batch,
# so the events of one fact go out all together or not at all.  A spliced event (the hub's own
# resync_required) names its seq and epoch inside its data too, through the placeholders below.
APPEND_LUA = """
local epoch = redis.call('GET', KEYS[1])
if (not epoch) or redis.call('EXISTS', KEYS[2]) == 0 then
  epoch = ARGV[1]
  redis.call('SET', KEYS[1], epoch)
  redis.call('DEL', KEYS[2], KEYS[3])
end
local out = {epoch}
local decided = {}
local i = 6
while i <= #ARGV do
  local once = tonumber(ARGV[i + 6])
  local go = true
  if once > 0 then
    if decided[once] == nil then
      decided[once] = redis.call('SET', KEYS[once], '1', 'NX', 'PX', ARGV[5]) ~= false
    end
    go = decided[once]
  end
  if go then
    local seq = redis.call('INCR', KEYS[2])
    local envelope = ARGV[i] .. seq .. ARGV[i + 1]
    if ARGV[i + 4] == '1' then
      envelope = string.gsub(envelope, '"__IGSYNC_SEQ__"', seq)
      envelope = string.gsub(envelope, '"__IGSYNC_EPOCH__"', '"' .. epoch .. '"')
    end
    redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[2], seq .. '-0', 'e', envelope, 'r', ARGV[i + 2],
      'c', ARGV[i + 3], 'i', ARGV[i + 5])
    redis.call('PUBLISH', ARGV[4],
      epoch .. '|' .. seq .. '|' .. ARGV[i + 2] .. '|' .. ARGV[i + 3] .. '|' .. ARGV[i + 5] .. '|' .. envelope)
    out[#out + 1] = seq
  else
    out[#out + 1] = 0
  end
  i = i + 7
end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
redis.call('PEXPIRE', KEYS[3], ARGV[3])
return out
"""

# KEYS: epoch, seq, log.  ARGV: candidate epoch, ttl ms.  Returns {epoch, latest seq}.
# Creating the epoch here too means a subscriber of a channel nobody published on yet
# already has the epoch its position belongs to.
STATE_LUA = """
local epoch = redis.call('GET', KEYS[1])
if (not epoch) or redis.call('EXISTS', KEYS[2]) == 0 then
  epoch = ARGV[1]
  redis.call('SET', KEYS[1], epoch)
  redis.call('SET', KEYS[2], 0)
  redis.call('DEL', KEYS[3])
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[2])
return {epoch, tonumber(redis.call('GET', KEYS[2]))}
"""

# KEYS: epoch, seq, log.  ARGV: the epoch the caller knew, a new epoch, ttl ms.  After a
# failover: if the log still has the epoch the caller knew, start a new one (the promoted
# replica's log may lack the tail its master had published). Callers that come later find the
# epoch already renewed and change nothing, so one failover renews a log once.  Returns the epoch.
RENEW_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  redis.call('SET', KEYS[2], 0, 'PX', ARGV[3])
  redis.call('DEL', KEYS[3])
end
return redis.call('GET', KEYS[1])
"""

# KEYS: epoch, seq, log.  ARGV: epoch, first id, last id.  The entries, or nil when the
# log now belongs to another epoch (its seqs would name other events).
READ_LUA = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return false end
return redis.call('XRANGE', KEYS[3], ARGV[2], ARGV[3])
"""


SEQ_PLACEHOLDER = "__IGSYNC_SEQ__"
EPOCH_PLACEHOLDER = "__IGSYNC_EPOCH__"


def keys(channel_id: str) -> list[str]:
    """The epoch, sequence and log keys of a channel (one hash slot)."""
    base = f"{KEY_PREFIX}{{{channel_id}}}"
    return [f"{base}:epoch", f"{base}:seq", f"{base}:log"]


def once_key(channel_id: str, name: str) -> str:
    """The key that says a fact's events were logged (``SET NX`` in :data:`APPEND_LUA`)."""
    return f"{KEY_PREFIX}{{{channel_id}}}:once:{name}"


def live_channel(channel_id: str) -> bytes:
    """The pub/sub channel of a channel's live events."""
    return f"{KEY_PREFIX}{{{channel_id}}}:live".encode()


def channel_of_live(name: bytes) -> str | None:
    """``igsync:rt:{<id>}:live`` → ``<id>``."""
    text = name.decode("utf-8", "replace")
    if not (text.startswith(KEY_PREFIX + "{") and text.endswith("}:live")):
        return None
    return text[len(KEY_PREFIX) + 1 : -len("}:live")]


def sharded_publish(script: str) -> str:
    """The script with its ``PUBLISH`` turned into ``SPUBLISH`` (a cluster's shard channel)."""
    return script.replace("redis.call('PUBLISH',", "redis.call('SPUBLISH',")


def new_epoch() -> str:
    """A new random epoch (a log that starts again)."""
    return secrets.token_hex(8)


@dataclass(frozen=True)
class Encoded:
    """An event as envelope bytes minus the ``seq`` number."""

    head: bytes
    tail: bytes
    received_at: float
    conversation_id: str | None
    # Data holds SEQ_PLACEHOLDER / EPOCH_PLACEHOLDER, replaced by the real values.
    splice: bool = False
    # Names this event across paths: an event delivered without a seq (publish timed out,
    # yet Redis ran the script) is recognised when its sequenced copy arrives.
    eid: str = field(default_factory=lambda: secrets.token_hex(6))
    # The fact this event announces (:attr:`server.inbox.events.Event.once`): logged at most once.
    once: str | None = None

    def with_seq(self, seq: int | None, epoch: str | None = None) -> bytes:
        """The envelope with its sequence number and epoch spliced in."""
        number = b"null" if seq is None else str(seq).encode()
        envelope = self.head + number + self.tail
        if self.splice:
            envelope = envelope.replace(orjson.dumps(SEQ_PLACEHOLDER), number)
            envelope = envelope.replace(orjson.dumps(EPOCH_PLACEHOLDER), orjson.dumps(epoch))
        return envelope


def encode(event: Event, *, splice: bool = False) -> Encoded:
    """API.md §4's envelope: ``event, seq, channel_id, conversation_id, ts, data``.
    ``ts`` is when the change entered igsync (the webhook's arrival)."""
    head = b'{"event":' + orjson.dumps(event.name) + b',"seq":'
    tail = (
        b',"channel_id":'
        + orjson.dumps(event.channel_id)
        + b',"conversation_id":'
        + orjson.dumps(event.conversation_id)
        + b',"ts":'
        + orjson.dumps(iso(from_epoch_ms(event.received_at * 1000)))
        + b',"data":'
        + orjson.dumps(event.data)
        + b"}"
    )
    return Encoded(head, tail, event.received_at, event.conversation_id, splice, once=event.once)


def control_envelope(
    name: str, channel_id: str, conversation_id: str | None, seq: int | None, data: dict[str, Any], at: float
) -> bytes:
    """A server-made event for one socket (``resync_required``), in the same envelope."""
    return encode(Event(name, channel_id, conversation_id, data, at)).with_seq(seq)


@dataclass(frozen=True)
class LiveMessage:
    """One event as it travels on pub/sub."""

    epoch: str
    seq: int
    received_at: float
    envelope: bytes
    conversation_id: str | None
    eid: str = ""


def parse_live(payload: bytes) -> LiveMessage | None:
    """``epoch|seq|received_at|conversation_id|eid|envelope`` (ids never contain ``|``)."""
    try:
        epoch, seq, received_at, conversation, eid, envelope = payload.split(b"|", 5)
        return LiveMessage(
            epoch.decode(), int(seq), float(received_at), envelope, conversation.decode() or None, eid.decode()
        )
    except (ValueError, UnicodeDecodeError):
        return None


@dataclass(frozen=True)
class Stored:
    seq: int
    envelope: bytes
    received_at: float
    conversation_id: str | None
    eid: str = ""


class EventLog:
    """The Redis side of the log, for one Redis client (the publish path's short timeouts)."""

    def __init__(
        self,
        redis: aioredis.Redis,
        *,
        max_events: int,
        ttl_secs: int,
        once_ttl_secs: int = 86_400,
        sharded: bool = False,
    ) -> None:
        self.redis = redis
        self.max_events = max_events
        self.ttl_ms = ttl_secs * 1000
        self.once_ttl_ms = once_ttl_secs * 1000
        # register_script: EVALSHA, and on NOSCRIPT (a restarted Redis) SCRIPT LOAD + retry.
        # On a cluster the live channel is a shard channel, published on the log's own shard.
        self._append = redis.register_script(sharded_publish(APPEND_LUA) if sharded else APPEND_LUA)
        self._state = redis.register_script(STATE_LUA)
        self._read = redis.register_script(READ_LUA)
        self._renew = redis.register_script(RENEW_LUA)

    async def append(self, channel_id: str, encoded: list[Encoded]) -> tuple[str, list[int]]:
        """Append events in order; returns (epoch, seq of each event), 0 for an event whose
        once key was already set (its fact was logged before; it is not logged again)."""
        key_names = keys(channel_id)
        once_index: dict[str, int] = {}
        args: list[Any] = [new_epoch(), self.max_events, self.ttl_ms, live_channel(channel_id), self.once_ttl_ms]
        for item in encoded:
            index = 0
            if item.once is not None:
                index = once_index.get(item.once, 0)
                if not index:
                    key_names.append(once_key(channel_id, item.once))
                    index = once_index[item.once] = len(key_names)
            args.extend(
                (
                    item.head,
                    item.tail,
                    repr(item.received_at),
                    item.conversation_id or "",
                    "1" if item.splice else "0",
                    item.eid,
                    index,
                )
            )
        epoch, *seqs = await self._append(keys=key_names, args=args)
        return epoch.decode(), [int(seq) for seq in seqs]

    async def state(self, channel_id: str) -> tuple[str, int]:
        """(epoch, latest seq) of the channel's log, creating its epoch if it has none."""
        epoch, latest = await self._state(keys=keys(channel_id), args=[new_epoch(), self.ttl_ms])
        return epoch.decode(), int(latest)

    async def renew(self, channel_id: str, known_epoch: str) -> str:
        """After a failover: a new epoch unless someone renewed ``known_epoch`` already."""
        epoch = await self._renew(keys=keys(channel_id), args=[known_epoch, new_epoch(), self.ttl_ms])
        return epoch.decode() if epoch is not None else known_epoch

    async def read(self, channel_id: str, epoch: str, after_seq: int, up_to_seq: int) -> list[Stored] | None:
        """Events ``after_seq < seq <= up_to_seq`` of ``epoch`` in order, or None when some of
        them are no longer retained (trimmed by MAXLEN, expired) or the epoch has changed."""
        if up_to_seq <= after_seq:
            return []
        rows = await self._read(keys=keys(channel_id), args=[epoch, f"{after_seq + 1}-0", f"{up_to_seq}-0"])
        if rows is None:
            return None
        out: list[Stored] = []
        expected = after_seq + 1
        for entry_id, flat in rows:
            seq = int(entry_id.split(b"-", 1)[0])
            if seq != expected:
                return None
            fields = dict(zip(flat[::2], flat[1::2], strict=True))
            conversation = fields.get(b"c", b"").decode() or None
            eid = fields.get(b"i", b"").decode()
            out.append(Stored(seq, fields[b"e"], float(fields.get(b"r", b"0")), conversation, eid))
            expected += 1
        if expected != up_to_seq + 1:
            return None
        return out
