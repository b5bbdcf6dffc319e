"""The realtime parts without Tornado: the session over a plain transport, the registry's
ordering over the real Redis log, and the envelope encoding."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import orjson
import pytest

from server.api.auth import INBOX, Principal
from server.inbox import events as ev
from server.ops.redis_clients import RedisTopology
from server.realtime.eventlog import EventLog, encode, parse_live
from server.realtime.registry import ChannelRoute, Registry
from server.realtime.session import CommandError, parse_command
from tests.support.helpers import wait_for
from tests.support.server import RunningServer, Tenant


class PlainTransport:
    """A socket stand-in: frames are 'flushed' only when the test says so."""

    def __init__(self, *, auto_flush: bool = True) -> None:
        self.auto_flush = auto_flush
        self.frames: list[dict[str, Any]] = []
        self.unflushed: list[asyncio.Future[None]] = []
        self.closed_with: tuple[int, str] | None = None

    def send(self, frames: list[bytes]) -> asyncio.Future[None]:
        self.frames.extend(orjson.loads(data) for data in frames)
        future = asyncio.get_running_loop().create_future()
        if self.auto_flush:
            future.set_result(None)
        else:
            self.unflushed.append(future)
        return future

    def close(self, code: int, reason: str) -> None:
        self.closed_with = (code, reason)


async def test_session_commands_without_tornado(server: RunningServer, tenant: Tenant) -> None:
    hub = server.core.realtime
    assert hub is not None
    transport = PlainTransport()
    session = hub.open_session(Principal(INBOX, tenant.owner), transport)
    await session.handle_frame('{"action": "ping"}')
    await session.handle_frame(orjson.dumps({"action": "subscribe", "channel_id": tenant.channel["id"]}))
    await session.handle_frame('{"action": "subscribe", "channel_id": "000000000000000000000000"}')
    await server.client.webhook_fixture("customer_text")
    await wait_for(lambda: len(transport.frames) >= 6)  # the sender task flushes in the background
    names = [f["event"] for f in transport.frames]
    assert names == ["pong", "subscribed", "error", "chat_message", "new_customer_message", "conversation_updated"]
    assert transport.frames[2]["error"] == "not_found"
    session.transport_closed()
    assert not hub.sessions and not hub.registry.routes


async def test_backlog_over_the_bound_closes_with_1013(server: RunningServer, tenant: Tenant) -> None:
    hub = server.core.realtime
    assert hub is not None
    transport = PlainTransport(auto_flush=False)
    session = hub.open_session(Principal(INBOX, tenant.owner), transport)
    session.queue_max = 3
    for i in range(3):
        session.send(b'{"event": "x", "n": %d}' % i)
    await wait_for(lambda: transport.frames)  # the sender handed them to the socket, unflushed
    assert session.backlog == 3 and not session.closed
    session.send(b'{"event": "x", "n": 3}')
    assert session.closed and session.close_reason == "slow_consumer"
    assert transport.closed_with is not None and transport.closed_with[0] == 1013
    assert server.core.metrics.ws_disconnects.labels(reason="slow_consumer")._value.get() == 1
    assert not hub.sessions


def test_parse_command_rules() -> None:
    assert parse_command('{"action": "subscribe", "channel_id": "c", "since_seq": 0, "epoch": "e"}').since_seq == 0
    assert parse_command(b'{"action": "unsubscribe", "conversation_id": "v"}').conversation_id == "v"
    for raw in ('{"action": "subscribe", "channel_id": "c", "since_seq": true}', '{"action": 1}', "null", "{"):
        with pytest.raises(CommandError):
            parse_command(raw)


class Recorder:
    def __init__(self) -> None:
        self.seqs: list[int | None] = []
        self.resyncs: list[tuple[int, str]] = []

    def offer(self, channel_id: str, seq: int | None, envelope: bytes, received_at: Any, conversation_id: Any) -> None:
        assert orjson.loads(envelope)["seq"] == seq
        self.seqs.append(seq)

    def resync(self, channel_id: str, latest_seq: int, epoch: str) -> None:
        self.resyncs.append((latest_seq, epoch))


@dataclass
class Routed:
    log: EventLog
    registry: Registry
    subscriber: Recorder
    channel: str
    route: ChannelRoute


@pytest.fixture
async def routed(stores) -> AsyncIterator[Routed]:
    """A registry over the real Redis log, one subscriber on a fresh channel, positioned."""
    redis = RedisTopology(stores.redis_url).client(timeout_ms=1000)
    log = EventLog(redis, max_events=100, ttl_secs=60)
    channel = "unit-" + uuid.uuid4().hex
    registry = Registry(log.read)
    subscriber = Recorder()
    route, created = registry.add(subscriber, channel)
    assert created
    epoch, latest = await log.state(channel)
    registry.set_position(route, epoch, latest)
    route.established = True
    yield Routed(log, registry, subscriber, channel, route)
    await registry.close()
    await redis.aclose()


async def test_registry_orders_and_dedups_racing_paths_from_the_real_log(routed: Routed) -> None:
    """Our own publish's reply and the pub/sub copy race: whatever order they come in, a
    subscriber sees each seq once, in order; a gap is read from the stream at once."""
    log, registry, subscriber, channel = routed.log, routed.registry, routed.subscriber, routed.channel
    items = [encode(ev.Event(ev.MESSAGE_DELETED, channel, None, {"message_id": str(i)})) for i in range(5)]
    epoch, seqs = await log.append(channel, items)
    assert seqs == [1, 2, 3, 4, 5]
    first = seqs[0]
    envelopes = {first + i: item.with_seq(first + i) for i, item in enumerate(items)}

    def arrive(seq: int) -> None:
        registry.publish_sequenced(channel, epoch, seq, envelopes[seq], None, None)

    arrive(3)  # pub/sub copy of 3 overtakes our own 1 and 2
    arrive(1)
    arrive(3)
    await wait_for(lambda: len(subscriber.seqs) >= 3)  # the gap read is a Redis round trip
    assert subscriber.seqs == [1, 2, 3]
    for seq in (2, 5, 4, 5, 1):
        arrive(seq)
    await wait_for(lambda: len(subscriber.seqs) >= 5)
    assert subscriber.seqs == [1, 2, 3, 4, 5]
    assert subscriber.resyncs == []
    # A stale event of a retired epoch is ignored; a new epoch voids positions.
    registry.publish_sequenced(channel, "other-epoch", 1, envelopes[1], None, None)
    assert subscriber.resyncs == [(0, "other-epoch")] and subscriber.seqs[-1] == 1
    registry.publish_sequenced(channel, epoch, 6, envelopes[5], None, None)
    assert len(subscriber.resyncs) == 1


async def test_an_event_routed_without_seq_is_not_routed_again_with_one(routed: Routed) -> None:
    """A publish that timed out on our side although Redis ran the script: the event went to
    local sockets without a seq; its sequenced copy (pub/sub, stream) only advances the route."""
    log, registry, subscriber, channel = routed.log, routed.registry, routed.subscriber, routed.channel
    route = routed.route
    item = encode(ev.Event(ev.MESSAGE_DELETED, channel, None, {"message_id": "m"}))
    registry.publish_unsequenced(channel, item.with_seq(None), item.received_at, None, item.eid)
    epoch, (seq,) = await log.append(channel, [item])  # Redis did run it
    registry.publish_sequenced(channel, epoch, seq, item.with_seq(seq), None, None, item.eid)
    after = encode(ev.Event(ev.MESSAGE_DELETED, channel, None, {"message_id": "n"}))
    epoch, (seq2,) = await log.append(channel, [after])
    registry.publish_sequenced(channel, epoch, seq2, after.with_seq(seq2), None, None, after.eid)
    assert subscriber.seqs == [None, seq2] and route.delivered == seq2


async def test_the_events_of_one_fact_are_logged_once_whatever_publishes_them_again(routed: Routed) -> None:
    """A message's events carry its once key: a second publish of the same fact (a redelivery
    that cannot know whether the first publish happened) logs nothing, and the same call's
    other events still go out; a fact that never went out is logged in full."""
    log, channel = routed.log, routed.channel

    def fact(name: str) -> list[ev.Event]:
        return [
            ev.Event(kind, channel, None, {"message_id": name}, once=f"msg:{name}")
            for kind in (ev.CHAT_MESSAGE, ev.CONVERSATION_UPDATED)
        ]

    epoch, seqs = await log.append(channel, [encode(e) for e in fact("a")])
    assert seqs == [1, 2]
    plain = ev.Event(ev.MESSAGE_DELETED, channel, None, {"message_id": "x"})
    epoch, seqs = await log.append(channel, [encode(e) for e in [*fact("a"), plain, *fact("b")]])
    assert seqs == [0, 0, 3, 4, 5]
    epoch, seqs = await log.append(channel, [encode(e) for e in fact("b")])
    assert seqs == [0, 0]
    replay = await log.read(channel, epoch, 0, 5)
    assert replay is not None and [orjson.loads(s.envelope)["data"]["message_id"] for s in replay] == [
        "a",
        "a",
        "x",
        "b",
        "b",
    ]
    assert await log.redis.pttl(f"igsync:rt:{{{channel}}}:once:msg:a") > 0


def test_text_frames_follow_rfc_6455() -> None:
    from server.realtime.wire import text_frame, text_frames

    assert text_frame(b"hi") == b"\x81\x02hi"
    assert text_frame(b"x" * 200)[:4] == b"\x81\x7e\x00\xc8"
    assert text_frame(b"x" * 70_000)[:10] == b"\x81\x7f" + (70_000).to_bytes(8, "big")
    assert text_frames([b"a", b"bc"]) == b"\x81\x01a\x81\x02bc"


def test_envelope_and_live_wire_format() -> None:
    event = ev.Event(ev.CHAT_MESSAGE, "c1", "v1", {"message": {"content": 'a|b "q"'}}, 1_700_000_000.5)
    encoded = encode(event)
    envelope = orjson.loads(encoded.with_seq(42))
    assert envelope == {
        "event": "chat_message",
        "seq": 42,
        "channel_id": "c1",
        "conversation_id": "v1",
        "ts": "2023-11-14T22:13:20.500Z",
        "data": {"message": {"content": 'a|b "q"'}},
    }
    assert orjson.loads(encoded.with_seq(None))["seq"] is None
    live = parse_live(b"ep|7|1.5|v1|e1d|" + encoded.with_seq(7))
    assert live is not None and (live.epoch, live.seq, live.conversation_id, live.eid) == ("ep", 7, "v1", "e1d")
    assert orjson.loads(live.envelope)["data"]["message"]["content"] == 'a|b "q"'
    assert parse_live(b"garbage") is None


async def test_a_store_failure_during_a_command_answers_unavailable(server: RunningServer, tenant: Tenant) -> None:
    from models.store import Store
    from server.inbox.scope import OwnerScope

    hub = server.core.realtime
    assert hub is not None
    transport = PlainTransport()
    session = hub.open_session(Principal(INBOX, tenant.owner), transport)
    unreachable = Store("mongodb://127.0.0.1:9/?directConnection=true", "nowhere", timeout_ms=200)
    session.inbox = OwnerScope(unreachable)
    await session.handle_frame(orjson.dumps({"action": "subscribe", "channel_id": tenant.channel["id"]}))
    await session.handle_frame('{"action": "ping"}')
    await wait_for(lambda: len(transport.frames) >= 2)
    assert transport.frames[0]["event"] == "error" and transport.frames[0]["error"] == "unavailable"
    assert transport.frames[1] == {"event": "pong"} and not session.closed
    session.transport_closed()
    await unreachable.close()
