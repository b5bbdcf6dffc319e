"""The webhook parser fuzzed from real payload shapes (hypothesis): every fixture Meta sends,
with any value anywhere replaced by arbitrary JSON. No exception escapes but PayloadError, and
every item that is not ``invalid`` carries only what the store can hold: Instagram ids as digit
strings, mids as bounded strings, free-form keys without NUL, ``$`` prefix or dots."""

from __future__ import annotations

import copy
from typing import Any

import bson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from server.ingest import parse as wp
from tests.support.helpers import FIXTURES, fixture_json

PAYLOADS = [fixture_json(p.name) for p in sorted(FIXTURES.glob("*.json"))]

# Keys MongoDB refuses or reads as operators and paths, besides any text.
hostile_keys = st.sampled_from(["$where", "$ne", "a.b", "x\x00y", "\x00", ""]) | st.text(max_size=12)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(hostile_keys, children, max_size=4),
    max_leaves=12,
)


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(node, dict):
        for key, value in node.items():
            out += _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            out += _paths(value, (*prefix, i))
    return out


@st.composite
def mutated_payloads(draw: st.DrawFn) -> Any:
    payload = copy.deepcopy(draw(st.sampled_from(PAYLOADS)))
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        paths = _paths(payload)
        path = draw(st.sampled_from(paths))
        if not path:
            continue
        parent = payload
        for step in path[:-1]:
            parent = parent[step]
        parent[path[-1]] = draw(json_values)
    return payload


def _storable(item: wp.WebhookItem) -> None:
    for party in (item.sender_id, item.recipient_id):
        assert party is not None and party.isdigit() and len(party) <= wp.MAX_ID_DIGITS
    for mid in (item.mid, item.target_mid):
        if mid is not None:
            assert isinstance(mid, str) and 0 < len(mid) <= wp.MAX_MID_CHARS and "\x00" not in mid
    context = (item.referral or {}).get("ads_context_data") or {}
    for key in context:
        assert "\x00" not in key and "." not in key and not key.startswith("$") and key
    # The free-form parts encode as BSON: a document built from them is storable.
    bson.encode({"referral": item.referral, "attachments": item.attachments, "postback": item.postback})


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_payloads())
def test_the_parser_takes_any_mutation_of_a_real_payload(payload: Any) -> None:
    try:
        items = wp.parse_body(payload)
    except wp.PayloadError:
        return
    for item in items:
        if item.kind in (wp.KIND_INVALID, wp.KIND_TEST):
            continue
        _storable(item)
