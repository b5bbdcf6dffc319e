"""History from Meta's Conversations API: a channel's past messages, stored once, as the webhook
would have stored them.

Owns the walk of one run (:class:`HistoryImporter`): list the channel's conversations (most
recently active first; a repair stops at the first one older than its gap), then for each
conversation its newest message ids, then the details of each id not stored yet — Meta details
only the 20 most recent messages of a thread, so older ones are counted ``not_detailed`` and
left. Every call goes through :class:`GraphCalls`: within Meta's limit of calls per second per
account, retried on rate limits and Meta-side outages, and a refused token stops the run
(the channel is marked ``needs_reauth``; reconnecting queues the run again).

A message is stored by :class:`ImportedMessages` along the webhook's own path — the customer
and conversation found or created, direction by ``from.id``, the unique ``mids`` index
deciding "new or duplicate" — so a message stored by a webhook is never imported twice, and a
webhook redelivering an imported mid is a duplicate. An owner message whose echo never came
(an outbound message of ours still without a mid, same text, sent within
:data:`PAIR_WINDOW_SECS`) gets the mid instead of a second copy.

The run's document is its checkpoint (:mod:`models.history_runs`): saved after every
conversation together with the lease, so a stopped run is taken over where it was.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from models import history_runs as runs_model
from models.messages import IMPORTED_REPAIR
from models.store import Store
from models.timeutil import iso, parse_iso, utcnow
from server.graph.client import TOKEN_EXPIRED, TRANSIENT, GraphAccount, GraphApiClient, GraphApiError
from server.graph.health import ChannelHealth
from server.inbox.threads import ThreadResolver, channel_account_ids
from server.ingest import parse as wp
from server.ingest.pipeline import CUSTOMER_TO_OWNER, OWNER_TO_CUSTOMER, NewCustomerHook, build_message
from server.ingest.recorder import MessageRecorder
from server.ops.metrics import Metrics
from server.outbound.limiter import TokenBucket

log = logging.getLogger("igsync.history")

# Meta answers message details for a thread's 20 most recent messages only.
DETAILED_PER_THREAD = 20
# An imported owner message takes the place of an outbound message of ours still waiting for its
# echo when the texts match and the times are this close (the echo was lost in the outage).
PAIR_WINDOW_SECS = 120.0
# Calls that Meta answered with a rate limit or an outage are tried again, waiting longer each
# time, this many times before the run stops (failed, resumable).
MAX_CALL_ATTEMPTS = 6
MAX_RETRY_WAIT_SECS = 60.0
TOKEN_REFUSED = "needs_reauth"

T = TypeVar("T")


class RunStopped(Exception):
    """The run cannot go on now: ``reason`` is stored on it (a refused token, Meta down)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class LeaseLost(Exception):
    """Another process took the run over (this one was too slow to renew its lease)."""


class Interrupted(Exception):
    """The process is stopping: the run is handed back between two conversations."""


class GraphCalls:
    """The Graph API calls of one run: paced, counted, retried."""

    def __init__(self, graph: GraphApiClient, *, calls_per_sec: float, retry_base_secs: float) -> None:
        self.graph = graph
        self.bucket = TokenBucket(calls_per_sec)
        self.retry_base_secs = retry_base_secs
        self.calls = 0

    async def __call__(self, call: Callable[[], Awaitable[T]]) -> T:
        """One call within the account's rate; rate limits and outages tried again."""
        for attempt in range(1, MAX_CALL_ATTEMPTS + 1):
            # Pacing, not correctness: wait for the account's next call slot.
            wait = self.bucket.wait_secs()
            while wait > 0:
                await asyncio.sleep(wait)
                wait = self.bucket.wait_secs()
            self.calls += 1
            try:
                return await call()
            except GraphApiError as exc:
                if exc.category == TOKEN_EXPIRED:
                    raise RunStopped(TOKEN_REFUSED) from None
                if exc.category != TRANSIENT or attempt == MAX_CALL_ATTEMPTS:
                    raise RunStopped(f"graph_error code={exc.code} subcode={exc.subcode} {exc.category}") from None
                log.info("history: Meta answered %s (code=%s); trying again", exc.category, exc.code)
            await asyncio.sleep(min(self.retry_base_secs * 2 ** (attempt - 1), MAX_RETRY_WAIT_SECS))
        raise AssertionError("unreachable")


def messaging_of(details: dict[str, Any], account_ids: set[str]) -> dict[str, Any]:
    """A Conversations API message as the webhook's ``messaging`` item it would have been."""
    sender = details.get("from") if isinstance(details.get("from"), dict) else {}
    to = details.get("to")
    recipients = to.get("data") if isinstance(to, dict) else None
    recipient = recipients[0] if isinstance(recipients, list) and recipients else {}
    message: dict[str, Any] = {"mid": details.get("id")}
    if isinstance(details.get("message"), str) and details["message"]:
        message["text"] = details["message"]
    attachments = _attachments(details.get("attachments"))
    if attachments:
        message["attachments"] = attachments
    if str(sender.get("id")) in account_ids:
        message["is_echo"] = True
    try:
        sent_ms = int(parse_iso(str(details.get("created_time"))).timestamp() * 1000)
    except ValueError:
        sent_ms = None
    return {
        "sender": {"id": sender.get("id")},
        "recipient": {"id": recipient.get("id") if isinstance(recipient, dict) else None},
        "timestamp": sent_ms,
        "message": message,
    }


def _attachments(raw: Any) -> list[dict[str, Any]]:
    data = raw.get("data") if isinstance(raw, dict) else None
    out: list[dict[str, Any]] = []
    for item in data if isinstance(data, list) else []:
        if not isinstance(item, dict):
            continue
        for key, kind in (("image_data", "image"), ("video_data", "video"), ("audio_data", "audio")):
            nested = item.get(key)
            if isinstance(nested, dict) and isinstance(nested.get("url"), str):
                out.append({"type": kind, "payload": {"url": nested["url"]}})
                break
        else:
            if isinstance(item.get("file_url"), str):
                out.append({"type": "file", "payload": {"url": item["file_url"]}})
    return out


def active_since(conversations: list[dict[str, Any]], since: dt.datetime | None) -> tuple[list[dict[str, Any]], bool]:
    """The conversations of a page (most recently active first) active since ``since``, and
    whether the page reached an older one (then the pages after it are older still)."""
    kept = []
    for conversation in conversations:
        updated = _time(conversation.get("updated_time"))
        if since is not None and updated is not None and updated < since:
            return kept, True
        if isinstance(conversation.get("id"), str):
            kept.append({"id": conversation["id"], "updated_time": updated})
    return kept, False


async def newest_messages(
    calls: GraphCalls, account: GraphAccount, conversation_id: str, since: dt.datetime | None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """A conversation's newest messages (since ``since``), newest first, as ``(detailed,
    beyond)``: the ones Meta details, and those listed past its 20-message limit."""
    listed: list[dict[str, Any]] = []
    after: str | None = None
    while len(listed) < DETAILED_PER_THREAD:
        page = await calls(lambda after=after: calls.graph.conversation_messages(account, conversation_id, after))
        listed.extend(m for m in page.items if isinstance(m.get("id"), str))
        after = page.after
        if after is None:
            break
    if since is not None:
        listed = [m for m in listed if (_time(m.get("created_time")) or since) >= since]
    return listed[:DETAILED_PER_THREAD], listed[DETAILED_PER_THREAD:]


class ImportedMessages:
    """Stores one Conversations API message once, along the webhook's path."""

    def __init__(
        self,
        store: Store,
        threads: ThreadResolver,
        recorder: MessageRecorder,
        new_customer_hooks: list[NewCustomerHook],
    ) -> None:
        self.store = store
        self.threads = threads
        self.recorder = recorder
        self.new_customer_hooks = new_customer_hooks

    async def store_message(self, channel: dict[str, Any], details: dict[str, Any], mode: str) -> str:
        """``stored``, ``duplicate`` or ``invalid`` (HISTORY_OUTCOMES)."""
        account_ids = channel_account_ids(channel)
        item = wp.parse_messaging(messaging_of(details, account_ids), channel["page_id"], "messaging")
        if item.kind != wp.KIND_MESSAGE or not item.mid:
            log.warning("history: message %s skipped: %s", details.get("id"), item.error or item.kind)
            return "invalid"
        owner = item.is_echo or item.sender_id in account_ids
        customer_ig = item.recipient_id if owner else item.sender_id
        if not customer_ig or customer_ig in account_ids:
            return "invalid"
        thread = await self.threads.resolve(channel["_id"], customer_ig)
        if thread.customer_created and thread.customer is not None:
            for hook in self.new_customer_hooks:
                hook.new_customer(channel, thread.customer)
        doc = build_message(item, channel["_id"], thread, OWNER_TO_CUSTOMER if owner else CUSTOMER_TO_OWNER)
        doc["imported"] = mode
        if owner and await self._pair_with_unechoed(doc):
            return "duplicate"
        recorded = await self.recorder.record(doc, received_at=time.time())
        return "duplicate" if recorded.duplicate else "stored"

    async def _pair_with_unechoed(self, doc: dict[str, Any]) -> bool:
        # An outbound message of ours whose echo was lost in the outage: the imported message is
        # that echo. Only the first candidate: two sends of one text a minute apart stay two.
        candidates = await self.store.messages.unechoed_near(
            doc["channel_id"], doc["conversation_id"], doc["content_hash"], doc["sent_at"], PAIR_WINDOW_SECS
        )
        for candidate in sorted(candidates, key=lambda d: abs((d["sent_at"] - doc["sent_at"]).total_seconds())):
            await self.store.messages.add_mids(candidate, [doc["mid"]])
            log.info("history: mid %s given to outbound message %s (its echo never came)", doc["mid"], candidate["_id"])
            return True
        return False


class HistoryImporter:
    """Runs one claimed history run (import or repair) to its end, checkpointing as it goes."""

    def __init__(
        self,
        *,
        store: Store,
        graph: GraphApiClient,
        messages: ImportedMessages,
        health: ChannelHealth,
        metrics: Metrics,
        calls_per_sec: float,
        lease_secs: float,
        retry_base_secs: float = 1.0,
    ) -> None:
        self.store = store
        self.graph = graph
        self.messages = messages
        self.health = health
        self.metrics = metrics
        self.calls_per_sec = calls_per_sec
        self.lease_secs = lease_secs
        self.retry_base_secs = retry_base_secs

    async def execute(
        self,
        run: dict[str, Any],
        on_progress: Callable[[dict[str, Any]], Awaitable[None]] | None = None,
        *,
        should_stop: Callable[[], bool] = lambda: False,
    ) -> dict[str, Any]:
        """Run ``run`` (claimed by its owner) until done, stopped or taken over; its progress.
        ``should_stop`` is asked between conversations: the process is stopping, and the run
        is handed back (queued, checkpoint kept) for any process to go on with."""
        channel = await self.store.channels.get(run["channel_id"])
        account = None if channel is None else GraphAccount.of(channel)
        walk = _Walk(self, run, on_progress, should_stop)
        if channel is None or account is None or channel.get("needs_reauth") or not channel.get("is_connect"):
            reason = TOKEN_REFUSED if channel is not None and channel.get("needs_reauth") else "no_token"
            return await walk.stop(reason)
        try:
            await walk.go(channel, account)
        except RunStopped as stop:
            if stop.reason == TOKEN_REFUSED and not await self.health.token_rejected(channel, by="history"):
                # Reconnected while this run called with the old token: go on with the new one.
                return await walk.hand_back("the channel has a new token")
            return await walk.stop(stop.reason)
        except LeaseLost:
            log.warning("history: run %s was taken over by another process", run["_id"])
            return walk.progress(runs_model.RUNNING)
        except Interrupted:
            return await walk.hand_back("stopping")
        return await walk.finish()

    async def dry_run(
        self, channel: dict[str, Any], since: dt.datetime | None, on_conversation: Callable[[dict[str, Any]], None]
    ) -> dict[str, Any]:
        """What a history import would store, without storing: per conversation, the messages
        Meta would detail that are not stored yet (the same calls, minus the details)."""
        account = GraphAccount.of(channel)
        if account is None or channel.get("needs_reauth"):
            raise RunStopped(TOKEN_REFUSED)
        calls = GraphCalls(self.graph, calls_per_sec=self.calls_per_sec, retry_base_secs=self.retry_base_secs)
        totals = {"conversations": 0, "would_store": 0, "stored_already": 0, "not_detailed": 0}
        after: str | None = None
        while True:
            page = await calls(lambda after=after: self.graph.conversations(account, after))
            conversations, older = active_since(page.items, since)
            for conversation in conversations:
                detailed, beyond = await newest_messages(calls, account, conversation["id"], since)
                known = await self.store.messages.stored_mids(channel["_id"], [m["id"] for m in detailed])
                row = {
                    "conversation": conversation["id"],
                    "updated_time": iso(conversation["updated_time"]),
                    "would_store": len(detailed) - len(known),
                    "stored_already": len(known),
                    "not_detailed": len(beyond),
                }
                on_conversation(row)
                totals["conversations"] += 1
                for key in ("would_store", "stored_already", "not_detailed"):
                    totals[key] += row[key]
            after = page.after
            if older or after is None:
                return {**totals, "calls": calls.calls}


class _Walk:
    """The state of one execution of a run: the checkpoint fields as they advance."""

    def __init__(
        self,
        importer: HistoryImporter,
        run: dict[str, Any],
        on_progress: Callable[[dict[str, Any]], Awaitable[None]] | None,
        should_stop: Callable[[], bool],
    ) -> None:
        self.should_stop = should_stop
        self.importer = importer
        self.run = run
        self.on_progress = on_progress
        self.calls = GraphCalls(
            importer.graph, calls_per_sec=importer.calls_per_sec, retry_base_secs=importer.retry_base_secs
        )
        self.counts: dict[str, int] = {**dict.fromkeys(runs_model.COUNTS, 0), **(run.get("counts") or {})}
        self.conversations: list[dict[str, Any]] = list(run.get("conversations") or [])
        self.next_index = int(run.get("next_index") or 0)
        self.started = time.monotonic()
        self.stored_at_start = self.counts["stored"] + self.counts["duplicate"]
        self.since: dt.datetime | None = run.get("since")

    async def go(self, channel: dict[str, Any], account: GraphAccount) -> None:
        if not self.run.get("listed"):
            await self._list(account)
        while self.next_index < len(self.conversations):
            await self._conversation(channel, account, self.conversations[self.next_index])
            self.next_index += 1
            self.counts["conversations_done"] = self.next_index
            await self._checkpoint({"next_index": self.next_index})
            if self.should_stop() and self.next_index < len(self.conversations):
                raise Interrupted()

    async def _list(self, account: GraphAccount) -> None:
        after = self.run.get("list_after")
        while True:
            page = await self.calls(lambda after=after: self.importer.graph.conversations(account, after))
            conversations, older = active_since(page.items, self.since)
            self.conversations.extend(conversations)
            after = page.after
            if older or after is None:
                break
            await self._checkpoint({"conversations": self.conversations, "list_after": after})
        await self._checkpoint(
            {"conversations": self.conversations, "list_after": None, "listed": True, "total": len(self.conversations)}
        )

    async def _conversation(self, channel: dict[str, Any], account: GraphAccount, conversation: dict[str, Any]) -> None:
        graph, mode = self.importer.graph, self.run["mode"]
        detailed, beyond = await newest_messages(self.calls, account, conversation["id"], self.since)
        self._count(mode, "not_detailed", len(beyond))
        known = await self.importer.store.messages.stored_mids(channel["_id"], [m["id"] for m in detailed])
        self._count(mode, "duplicate", len(known))
        # Oldest first: the conversation's last message and reply status come out as live.
        for listed_message in reversed(detailed):
            if listed_message["id"] in known:
                continue
            details = await self.calls(lambda mid=listed_message["id"]: graph.message_details(account, mid))
            outcome = await self.importer.messages.store_message(channel, details, mode)
            self._count(mode, outcome, 1)
            if outcome == "stored" and mode == IMPORTED_REPAIR:
                self.importer.metrics.messages_repaired.inc()

    def _count(self, mode: str, outcome: str, n: int) -> None:
        if n:
            self.counts[outcome] += n
            self.importer.metrics.history_messages.labels(mode=mode, outcome=outcome).inc(n)

    def _tally_calls(self) -> None:
        # The run's calls: those of earlier executions (its stored counts) and this one's.
        self.counts["calls"] = int((self.run.get("counts") or {}).get("calls", 0)) + self.calls.calls

    async def _checkpoint(self, fields: dict[str, Any]) -> None:
        self._tally_calls()
        ok = await self.importer.store.history_runs.checkpoint(
            self.run, {**fields, "counts": self.counts}, self.importer.lease_secs
        )
        if not ok:
            raise LeaseLost()
        if self.on_progress is not None:
            await self.on_progress(self.progress(runs_model.RUNNING))

    def progress(self, state: str, error: str | None = None) -> dict[str, Any]:
        """What the run has done, its rate and what is left, as the API and sockets show it."""
        return progress_of(
            {**self.run, "state": state, "error": error, "counts": self.counts, "next_index": self.next_index},
            total=len(self.conversations),
            rate=(self.counts["stored"] + self.counts["duplicate"] - self.stored_at_start)
            / max(time.monotonic() - self.started, 1e-6),
            secs_per_conversation=(time.monotonic() - self.started) / max(self.next_index - self._resumed_at, 1),
        )

    @property
    def _resumed_at(self) -> int:
        return int(self.run.get("next_index") or 0)

    async def stop(self, reason: str) -> dict[str, Any]:
        self._tally_calls()
        await self.importer.store.history_runs.finish(
            self.run, runs_model.FAILED, {"error": reason, "counts": self.counts, "next_index": self.next_index}
        )
        log.warning("history: run %s stopped: %s (resumable)", self.run["_id"], reason)
        return await self._announce(self.progress(runs_model.FAILED, reason))

    async def hand_back(self, why: str) -> dict[str, Any]:
        """Queue the run again, checkpoint kept, for any process to go on with."""
        await self.importer.store.history_runs.release(self.run)
        log.info("history: run %s handed back at conversation %d (%s)", self.run["_id"], self.next_index, why)
        return self.progress(runs_model.QUEUED)

    async def finish(self) -> dict[str, Any]:
        self._tally_calls()
        await self.importer.store.history_runs.finish(self.run, runs_model.DONE, {"counts": self.counts})
        log.info(
            "history: run %s done: %d conversations, %d stored, %d already stored, %d not detailed by Meta",
            self.run["_id"],
            len(self.conversations),
            self.counts["stored"],
            self.counts["duplicate"],
            self.counts["not_detailed"],
        )
        return await self._announce(self.progress(runs_model.DONE))

    async def _announce(self, progress: dict[str, Any]) -> dict[str, Any]:
        if self.on_progress is not None:
            await self.on_progress(progress)
        return progress


def progress_of(
    run: dict[str, Any], *, total: int | None = None, rate: float = 0.0, secs_per_conversation: float | None = None
) -> dict[str, Any]:
    """A run's progress as shown (API, CLI, sockets); rate and ETA only while it runs."""
    counts = {**dict.fromkeys(runs_model.COUNTS, 0), **(run.get("counts") or {})}
    if total is None:
        total = run.get("total") if run.get("total") is not None else len(run.get("conversations") or [])
    done = int(run.get("next_index") or 0)
    eta = None
    if run.get("state") == runs_model.RUNNING and secs_per_conversation is not None and total:
        eta = round(max(total - done, 0) * secs_per_conversation, 1)
    return {
        "id": run["_id"],
        "channel_id": str(run["channel_id"]),
        "mode": run["mode"],
        "state": run.get("state"),
        "since": iso(run.get("since")),
        "conversations": {"done": done, "total": total, "listed": bool(run.get("listed")) or done > 0},
        "messages": {k: counts[k] for k in ("stored", "duplicate", "not_detailed", "invalid")},
        "calls": counts["calls"],
        "messages_per_sec": round(rate, 2),
        "eta_secs": eta,
        "error": run.get("error"),
        "started_at": iso(run.get("started_at")),
        "finished_at": iso(run.get("finished_at")),
        "updated_at": iso(run.get("updated_at") or utcnow()),
    }


def _time(value: Any) -> dt.datetime | None:
    if isinstance(value, dt.datetime):
        return value
    if isinstance(value, (int, float)) or (isinstance(value, str) and value.isdigit()):
        return dt.datetime.fromtimestamp(int(value), tz=dt.UTC)  # Meta documents a UNIX timestamp too
    try:
        return parse_iso(str(value)) if value else None
    except ValueError:
        return None
