"""Fixtures of the accounts tests: a real server against the fake Graph API (both hosts served by
one fake unless a test starts a second) with a fake account's Conversations API history."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.fakes.graph import FakeGraphApi
from tests.support.events import events_env
from tests.support.helpers import ACCOUNT_ID

# A fake account's customers: 6300000000001000 + n.
FIRST_CUSTOMER = 6_300_000_000_001_000
# Messages of the history are this old (seconds before "now" of the fake's clock).
HISTORY_START = 1_780_000_000


def customer_id(n: int) -> str:
    return str(FIRST_CUSTOMER + n)


def fill_history(graph: FakeGraphApi, conversations: int, messages: int, *, start: int = HISTORY_START) -> None:
    """``conversations`` threads of ``messages`` each, every third message the business's; the
    last thread is the most recently active."""
    for c in range(conversations):
        texts = []
        for m in range(messages):
            text = f"owner: reply {m} in {c}" if m % 3 == 2 else f"question {m} in {c}"
            texts.append((f"aWdf_hist_{c}_{m}", text, start + c * 1000 + m))
        graph.add_conversation(f"t_{c:04d}", customer_id(c), ACCOUNT_ID, texts)


@pytest.fixture
async def env(stores: Any, tmp_path: Path, request: pytest.FixtureRequest) -> Any:
    # History is run by the test (history_concurrency=0) unless it asks for the worker.
    overrides = {"history_calls_per_sec": 2000.0, "history_concurrency": 0, **getattr(request, "param", {})}
    async with events_env(stores, tmp_path, **overrides) as e:
        yield e
