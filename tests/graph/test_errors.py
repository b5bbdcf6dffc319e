"""Meta's errors: one table, by code and subcode, shown to operators as it is."""

from __future__ import annotations

from server.graph.errors import FAILED, TRANSIENT, UNAVAILABLE, classify, table_rows
from tests.support.helpers import ROOT


def test_the_documented_table_is_the_one_the_code_uses() -> None:
    doc = (ROOT / "docs" / "accounts.md").read_text()
    for code, subcode, category, meaning in table_rows():
        assert f"| `{code}` | {subcode} | `{category}` | {meaning} |" in doc, (code, subcode)


def test_a_subcode_rule_comes_before_its_codes_catch_all() -> None:
    assert classify(100, 400, 2018001) == UNAVAILABLE
    assert classify(100, 400, 2018002) == TRANSIENT
    assert classify(100, 400) == TRANSIENT


def test_codes_no_rule_names_follow_meta_and_http() -> None:
    assert classify(10, 403) == FAILED  # permission: no retry helps
    assert classify(10, 500) == TRANSIENT  # Meta's outages answer 5xx with any code
    assert classify(368, 400, is_transient=True) == TRANSIENT
    assert classify(None, None) == TRANSIENT and classify(None, 429) == TRANSIENT and classify(None, 404) == FAILED
