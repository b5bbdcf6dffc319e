"""The pairing decision: pure-function tests, a property over every interleaving, and the
compare-and-swap under real concurrency against SecantusDB."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

from bson import ObjectId
from hypothesis import given, settings
from hypothesis import strategies as st
from pymongo.errors import DuplicateKeyError

from models.store import Store
from server.dedup.pairing import EchoMatch, EchoPairing, register_echo, register_send

WINDOW = 30.0


def test_echo_with_no_send_is_unmatched() -> None:
    state, match = register_echo(None, "m1", now=100.0, window_secs=WINDOW)
    assert match.send_id is None and match.first
    assert state is not None and state["echoes"][0]["mid"] == "m1"


def test_send_then_echo_pairs_and_each_send_absorbs_exactly_one_echo() -> None:
    state, send = register_send(None, "s1", [], now=100.0, window_secs=WINDOW)
    assert send.echo_mids == ()
    state, first = register_echo(state, "m1", now=101.0, window_secs=WINDOW)
    assert (first.send_id, first.by_mid, first.send_at) == ("s1", False, 100.0)
    state, second = register_echo(state, "m2", now=102.0, window_secs=WINDOW)
    assert second.send_id is None, "the second identical text is not absorbed (P3)"


def test_registration_is_idempotent() -> None:
    state, _ = register_send(None, "s1", [], now=100.0, window_secs=WINDOW)
    state, _ = register_echo(state, "m1", now=101.0, window_secs=WINDOW)
    unchanged, again = register_echo(state, "m1", now=102.0, window_secs=WINDOW)
    assert unchanged is None and again.send_id == "s1" and not again.first
    unchanged, send_again = register_send(state, "s1", [], now=103.0, window_secs=WINDOW)
    assert unchanged is None and send_again.echo_mids == ("m1",) and not send_again.first


def test_echo_first_then_send_takes_the_oldest_unpaired_echo() -> None:
    state, _ = register_echo(None, "m1", now=100.0, window_secs=WINDOW)
    state, _ = register_echo(state, "m2", now=101.0, window_secs=WINDOW)
    state, send = register_send(state, "s1", [], now=102.0, window_secs=WINDOW)
    assert send.echo_mids == ("m1",)
    state, send2 = register_send(state, "s2", [], now=103.0, window_secs=WINDOW)
    assert send2.echo_mids == ("m2",)


def test_sends_with_mids_only_take_their_own_echo() -> None:
    state, _ = register_send(None, "s1", ["mA"], now=100.0, window_secs=WINDOW)
    state, native = register_echo(state, "mN", now=101.0, window_secs=WINDOW)
    assert native.send_id is None, "a send with mids never absorbs another message"
    state, own = register_echo(state, "mA", now=102.0, window_secs=WINDOW)
    assert own.send_id == "s1" and own.by_mid
    # Echo first, then the send that lists it: exact too, skipping the older native echo.
    state, _ = register_echo(state, "mB", now=103.0, window_secs=WINDOW)
    state, send = register_send(state, "s2", ["mB"], now=104.0, window_secs=WINDOW)
    assert send.echo_mids == ("mB",)


def test_entries_older_than_the_window_never_pair() -> None:
    state, _ = register_send(None, "s1", [], now=100.0, window_secs=WINDOW)
    state, late = register_echo(state, "m1", now=100.0 + WINDOW + 0.001, window_secs=WINDOW)
    assert late.send_id is None
    assert [s["id"] for s in state["sends"]] == [], "pruned"
    state, _ = register_echo(None, "m2", now=200.0, window_secs=WINDOW)
    _, send = register_send(state, "s2", [], now=200.0 + WINDOW + 1, window_secs=WINDOW)
    assert send.echo_mids == ()


def test_pure_functions_do_not_mutate_their_input() -> None:
    state, _ = register_send(None, "s1", [], now=100.0, window_secs=WINDOW)
    snapshot = repr(state)
    register_echo(state, "m1", now=101.0, window_secs=WINDOW)
    assert repr(state) == snapshot


# One (conversation, text): sends without mids, echoes (some redelivered), in any order.
events = st.lists(
    st.one_of(
        st.tuples(st.just("send"), st.integers(0, 4)),
        st.tuples(st.just("echo"), st.integers(0, 6)),
    ),
    max_size=30,
)


@given(events)
@settings(max_examples=300, deadline=None)
def test_any_serial_order_pairs_consistently(order: list[tuple[str, int]]) -> None:
    """Whatever the order: each send holds at most one echo, each echo at most one send, the
    two sides agree, repeats get their first answer, and the pairing is maximal (no unpaired
    send beside an unpaired echo)."""
    state: dict[str, Any] | None = None
    answers: dict[str, Any] = {}
    clock = itertools.count(1000)
    for kind, n in order:
        now = float(next(clock))
        if kind == "send":
            new, match = register_send(state, f"s{n}", [], now=now, window_secs=WINDOW)
            key = f"s{n}"
            value: Any = match.echo_mids
        else:
            new, match = register_echo(state, f"m{n}", now=now, window_secs=WINDOW)
            key = f"m{n}"
            value = match.send_id
        if key in answers:
            assert new is None, "a repeat changes nothing"
            if kind == "echo":
                # Once paired, always the same send; unpaired until a later send claims it
                # (the echo came first: that send adopts the echo's message).
                assert answers[key] is None or value == answers[key]
                answers[key] = value
            else:
                assert set(answers[key]) <= set(value)
        else:
            answers[key] = value
        state = new if new is not None else state
    if state is None:
        return
    sends = {s["id"]: s for s in state["sends"]}
    echoes = {e["mid"]: e for e in state["echoes"]}
    for send in sends.values():
        assert len(send["echoes"]) <= 1
        for mid in send["echoes"]:
            assert echoes[mid]["send"] == send["id"]
    for echo in echoes.values():
        if echo["send"] is not None:
            assert sends[echo["send"]]["echoes"] == [echo["mid"]]
    unpaired_sends = [s for s in sends.values() if not s["echoes"]]
    unpaired_echoes = [e for e in echoes.values() if e["send"] is None]
    assert not (unpaired_sends and unpaired_echoes)


async def claim_then_register(pairing: EchoPairing, conversation: ObjectId, content_hash: str, mid: str) -> EchoMatch:
    """What the echo side does with no send outstanding (server/dedup/echo.py): create the
    document without reading (its claim, sent ahead of the message), else decide on it."""
    claim = pairing.new_echo_claim(conversation, content_hash, mid)
    try:
        await claim.coll.insert_one(claim.doc)
    except DuplicateKeyError:
        return await pairing.register_echo(conversation, content_hash, mid)
    return EchoMatch(None, by_mid=False, first=True, send_at=None)


async def test_concurrent_registrations_agree_across_clients(settings) -> None:
    """Two independent MongoDB clients (as two processes would have) race on one document:
    every echo is paired at most once, every send holds at most one echo, and every caller's
    answer matches the final document."""
    stores = [Store(settings.mongo_url, settings.mongo_db) for _ in range(2)]
    try:
        pairings = [EchoPairing(s.echo_pairs, window_secs=WINDOW) for s in stores]
        conversation = ObjectId()
        calls = []
        for i in range(6):
            calls.append(("send", f"s{i}", pairings[i % 2].register_send(conversation, "h", f"s{i}", [])))
        for i in range(9):
            # m0..m2 redelivered to both "processes" at once.
            for p in pairings if i < 3 else pairings[:1]:
                # Half of them with the "no send outstanding" hint: claimed before read.
                register = claim_then_register if i % 2 == 0 else EchoPairing.register_echo
                calls.append(("echo", f"m{i}", register(p, conversation, "h", f"m{i}")))
        results = await asyncio.gather(*[c[2] for c in calls])
        doc = await stores[0].echo_pairs.get(f"{conversation}:h")
        sends = {s["id"]: s for s in doc["sends"]}
        echoes = {e["mid"]: e for e in doc["echoes"]}
        assert len(sends) == 6 and len(echoes) == 9
        assert sum(1 for e in echoes.values() if e["send"]) == 6, "maximal: six sends, six of nine echoes"
        for (kind, key, _), result in zip(calls, results, strict=True):
            if kind == "echo":
                # Unpaired when it registered, or paired for good with the send it names.
                assert result.send_id in (None, echoes[key]["send"])
                if result.send_id is None and echoes[key]["send"] is not None:
                    claimed_by = sends[echoes[key]["send"]]
                    assert claimed_by["at"] >= echoes[key]["at"], "claimed by a later send only"
            else:
                assert list(result.echo_mids) in ([], sends[key]["echoes"])
                assert len(sends[key]["echoes"]) == 1
    finally:
        await stores[0].client.drop_database(settings.mongo_db)
        for s in stores:
            await s.close()
