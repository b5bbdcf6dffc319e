"""The pairing decision of echo dedup: which echo belongs to which send, decided once in MongoDB.

* :func:`register_echo` / :func:`register_send` — pure functions that decide, from one
  ``echo_pairs`` document (:mod:`models.echo_pairs`), which echo belongs to which send. They
  run inside a compare-and-swap, so across processes exactly one side sees the other.
* :class:`EchoPairing` — runs them against MongoDB: the single atomic decision both the
  webhook side (:mod:`server.dedup.echo`) and mark-sent (:mod:`server.dedup.marksent`) use.
"""

from __future__ import annotations

import copy
import datetime as dt
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bson import ObjectId

from models.echo_pairs import EchoPairRepository
from models.group_commit import LeadInsert

# One (conversation, text) document keeps at most this many sends and echoes of the window;
# only a flood of one identical text in one conversation could reach it.
MAX_ENTRIES = 500


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
    """The pairing document of one (conversation, text)."""
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
        """Decide, atomically, whether an echo pairs with a waiting send."""
        # The clock is read inside the decision: ``at`` is the time of the attempt that won.
        return await self.repo.transact(
            pair_document_key(conversation_id, content_hash),
            lambda doc: register_echo(doc, mid, now=self.clock(), window_secs=self.window_secs),
            expires_at=self._expiry(self.clock()),
        )

    def new_echo_claim(self, conversation_id: ObjectId, content_hash: str, mid: str) -> LeadInsert:
        """The insert :meth:`register_echo` makes when no pairing document exists: echo ``mid``
        registered, no send claims it. Sent ahead of the echo's message in one command
        (:mod:`server.dedup.echo`); refused on ``_id`` when the document exists after all."""
        now = self.clock()
        state, _ = register_echo(None, mid, now=now, window_secs=self.window_secs)
        assert state is not None  # a first registration always writes
        return self.repo.creation(pair_document_key(conversation_id, content_hash), state, expires_at=self._expiry(now))

    async def register_send(
        self, conversation_id: ObjectId, content_hash: str, send_id: str, mids: list[str]
    ) -> SendMatch:
        """Decide, atomically, whether a send pairs with an echo that came first."""
        return await self.repo.transact(
            pair_document_key(conversation_id, content_hash),
            lambda doc: register_send(doc, send_id, mids, now=self.clock(), window_secs=self.window_secs),
            expires_at=self._expiry(self.clock()),
        )
