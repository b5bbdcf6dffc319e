"""The randomized dedup harness: seeded schedules of mark-sent calls, their echoes, redeliveries and
Instagram-app messages with equal texts, played against several igsync processes that share
one MongoDB and one Redis; then a check of what MongoDB holds.

Used by ``tests/dedup/test_random.py`` (≥ 300 trials in CI) and ``bench/dedup_soak.py``
(10 000). The *schedule* is a pure function of the seed (so a failure is replayed with the
printed seed); the exact interleaving is up to the machine, which is the point.

What is guaranteed, and checked, per trial (one conversation, one text):

* #messages == #mark-sent calls + #Instagram-app messages (nothing lost, nothing twice);
* each mark-sent's ``client_message_id`` is on exactly one message, an outbound one of its type;
* every mid that was delivered (echoes and Instagram-app messages) is on exactly one message;
* the conversation applied each message exactly once;
* with mids given to mark-sent, the labels are exact too (the send's message holds its echo).
"""

from __future__ import annotations

import asyncio
import random
import re
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPResponse

from tests.support.helpers import ACCOUNT_ID, INTERNAL_TOKEN, Client, body_of, echo_item, messaging_body, text_item

TEXTS = ("ok", "Thanks! 🙏", "Your order shipped.", "Olá, tudo bem?", "See you at 9")
MAX_OFFSET_SECS = 0.5
# Meta redelivers after a 5xx, senders retry (same client_message_id): both emulated, with a
# doubling backoff as theirs (Meta keeps trying for hours). With a whole batch in flight the
# embedded store is overloaded for seconds at a time (requests queue for its connections and
# time out: hundreds of 503s a run, before and after any change); six quick attempts spaced
# 0.05–0.3 s could all fall inside one such spell (seen twice in 2-worker runs).
MAX_ATTEMPTS = 8
MAX_BACKOFF_SECS = 2.0
# A whole batch in flight at once: Tornado's client defaults to 10, which would queue (and so
# serialize) the very interleavings under test.
MAX_IN_FLIGHT = 512


class WideClient(Client):
    """The tests' HTTP client with room for every request of a batch in flight."""

    def __init__(self, base_url: str) -> None:
        super().__init__(base_url)
        self.http.close()
        self.http = AsyncHTTPClient(force_instance=True, max_clients=MAX_IN_FLIGHT)


@dataclass
class Delivery:
    at: float  # seconds after the trial starts
    process: int


@dataclass
class SendPlan:
    client_message_id: str
    type: str
    echo_mid: str
    with_mids: bool
    call: Delivery
    echoes: list[Delivery]  # the echo, then its 0–3 redeliveries
    retry: Delivery | None = None  # the sender calling again (same client_message_id)


@dataclass
class NativePlan:
    mid: str
    deliveries: list[Delivery]


@dataclass
class Trial:
    index: int
    customer: str
    text: str
    sends: list[SendPlan]
    natives: list[NativePlan]
    redis_down: bool = False

    def describe(self) -> str:
        parts = [f"trial {self.index} customer={self.customer} text={self.text!r} redis_down={self.redis_down}"]
        for s in self.sends:
            echoes = ", ".join(f"{d.at:.3f}@p{d.process}" for d in s.echoes)
            retry = f" retry={s.retry.at:.3f}@p{s.retry.process}" if s.retry else ""
            parts.append(
                f"  send {s.client_message_id} {s.type} mids={s.with_mids} call={s.call.at:.3f}@p{s.call.process}"
                f"{retry} echo {s.echo_mid[-8:]}: {echoes}"
            )
        for n in self.natives:
            parts.append(f"  native {n.mid[-8:]}: " + ", ".join(f"{d.at:.3f}@p{d.process}" for d in n.deliveries))
        return "\n".join(parts)


def plan_trials(seed: int, count: int, *, processes: int = 2) -> list[Trial]:
    """``count`` trials from ``seed`` (which of them run with Redis down is :func:`run_trials`' choice)."""
    rng = random.Random(seed)
    trials = []
    for index in range(count):
        with_mids = rng.random() < 0.5  # per trial: a sender gives mids consistently (docs/dedup.md)
        tag = f"{seed:x}{index:06d}"

        def deliveries(first: float) -> list[Delivery]:
            out = [Delivery(first, rng.randrange(processes))]
            for _ in range(rng.randint(0, 3)):
                out.append(Delivery(rng.uniform(first, first + 0.3), rng.randrange(processes)))
            return out

        sends = []
        for k in range(1 if rng.random() < 0.75 else 2):
            sends.append(
                SendPlan(
                    client_message_id=f"cm-{tag}-{k}",
                    type=rng.choice(("AI", "support")),
                    echo_mid=f"aWdfecho{tag}{k}",
                    with_mids=with_mids,
                    call=Delivery(rng.uniform(0, MAX_OFFSET_SECS), rng.randrange(processes)),
                    echoes=deliveries(rng.uniform(0, MAX_OFFSET_SECS)),
                    retry=(
                        Delivery(rng.uniform(0, MAX_OFFSET_SECS + 0.2), rng.randrange(processes))
                        if rng.random() < 0.2
                        else None
                    ),
                )
            )
        natives = [
            NativePlan(f"aWdfnative{tag}{k}", deliveries(rng.uniform(0, MAX_OFFSET_SECS)))
            for k in range(rng.choice((0, 0, 1, 1, 2)))
        ]
        trials.append(Trial(index, f"64{seed % 10_000:04d}{index:09d}", rng.choice(TEXTS), sends, natives))
    return trials


@dataclass
class Tally:
    """What the servers answered, summed over trials."""

    requests: int = 0
    retries: int = 0
    layers: Counter = field(default_factory=Counter)
    mark_sent: Counter = field(default_factory=Counter)
    stored: int = 0
    failures: list[str] = field(default_factory=list)
    # Seconds per request by kind: mark_sent, echo (owner webhooks), customer (baseline webhooks).
    latencies: dict[str, list[float]] = field(default_factory=lambda: {"mark_sent": [], "echo": [], "customer": []})
    retry_reasons: Counter = field(default_factory=Counter)


async def _attempts(
    call: Callable[[], Awaitable[HTTPResponse]], tally: Tally, what: str, kind: str
) -> HTTPResponse | None:
    for attempt in range(MAX_ATTEMPTS):
        tally.requests += 1
        try:
            response = await call()
        except (HTTPClientError, OSError) as exc:  # no answer at all: retried like a 5xx
            response = None
            error = type(exc).__name__
        else:
            # request_time: on the wire, without the client's own queue.
            tally.latencies[kind].append(response.request_time)
            if response.code < 500:
                return response
            error = str(response.code)
        tally.retries += 1
        tally.retry_reasons[error] += 1
        await asyncio.sleep(min(0.05 * 2**attempt, MAX_BACKOFF_SECS))  # the retrier's backoff (Meta / the sender)
    tally.failures.append(f"{what}: no 2xx after {MAX_ATTEMPTS} attempts")
    return None


async def run_trial(trial: Trial, clients: list[Client], tally: Tally, *, as_customer: bool = False) -> None:
    """Play one trial. ``as_customer``: the baseline — the same schedule with every request a plain
    customer message instead (no dedup on its path)."""

    async def mark_sent(send: SendPlan, call: Delivery) -> None:
        if as_customer:
            await deliver(f"{send.echo_mid}c{call.at}", call)
            return
        await asyncio.sleep(call.at)
        body: dict[str, Any] = {
            "account_id": ACCOUNT_ID,
            "customer_instagram_id": trial.customer,
            "content": trial.text,
            "type": send.type,
            "client_message_id": send.client_message_id,
        }
        if send.with_mids:
            body["mids"] = [send.echo_mid]
        client = clients[call.process]
        response = await _attempts(
            lambda: client.post("/api/v1/messages/mark-sent", body, token=INTERNAL_TOKEN),
            tally,
            f"trial {trial.index} mark-sent {send.client_message_id}",
            "mark_sent",
        )
        if response is None:
            return
        if response.code not in (200, 201):
            tally.failures.append(f"trial {trial.index} mark-sent answered {response.code}: {response.body!r}")
            return
        answer = body_of(response)
        tally.mark_sent["adopted" if answer["adopted"] else ("created" if response.code == 201 else "idempotent")] += 1

    async def deliver(mid: str, delivery: Delivery) -> None:
        await asyncio.sleep(delivery.at)
        if as_customer:
            raw = messaging_body(text_item(mid, trial.text, sender=trial.customer))
        else:
            raw = messaging_body(echo_item(mid, trial.text, customer=trial.customer))
        client = clients[delivery.process]
        kind = "customer" if as_customer else "echo"
        response = await _attempts(lambda: client.webhook(raw), tally, f"trial {trial.index} webhook {mid}", kind)
        if response is None:
            return
        if response.code != 200:
            tally.failures.append(f"trial {trial.index} webhook answered {response.code}: {response.body!r}")
            return
        answer = body_of(response)
        if answer.get("duplicate"):
            tally.layers[answer["layer"]] += 1
        elif answer.get("status") == "success":
            tally.stored += 1
        else:
            tally.failures.append(f"trial {trial.index} webhook answered {answer!r}")

    jobs = [mark_sent(s, s.call) for s in trial.sends]
    jobs += [mark_sent(s, s.retry) for s in trial.sends if s.retry is not None]
    jobs += [deliver(s.echo_mid, d) for s in trial.sends for d in s.echoes]
    jobs += [deliver(n.mid, d) for n in trial.natives for d in n.deliveries]
    await asyncio.gather(*jobs)


async def run_trials(
    trials: list[Trial],
    clients: list[Client],
    *,
    batch_size: int,
    redis_down_every: int = 0,
    stop_redis: Callable[[], None] | None = None,
    start_redis: Callable[[], None] | None = None,
    progress: Callable[[int, float], None] | None = None,
    as_customer: bool = False,
) -> Tally:
    """Trials in concurrent batches; with ``redis_down_every=3``, Redis is stopped for batches 0, 3,
    6… (and started again after each: the next batch runs on a restarted, empty Redis — P4 "after a
    restart too")."""
    tally = Tally()
    started = time.monotonic()
    for number, first in enumerate(range(0, len(trials), batch_size)):
        batch = trials[first : first + batch_size]
        down = bool(redis_down_every) and number % redis_down_every == 0
        if down and stop_redis is not None:
            stop_redis()
        for trial in batch:
            trial.redis_down = down
        try:
            await asyncio.gather(*[run_trial(t, clients, tally, as_customer=as_customer) for t in batch])
        finally:
            if down and start_redis is not None:
                start_redis()
        if progress is not None:
            progress(first + len(batch), time.monotonic() - started)
    return tally


async def redeliver_everything(trials: list[Trial], clients: list[Client], tally: Tally) -> list[str]:
    """Meta redelivers for up to 36 hours: once everything settled, every mid again, to any
    process. Each must be a ``mid`` duplicate; nothing may change."""
    problems: list[str] = []

    async def again(trial: Trial, mid: str, process: int) -> None:
        raw = messaging_body(echo_item(mid, trial.text, customer=trial.customer))
        response = await _attempts(lambda: clients[process].webhook(raw), tally, f"late redelivery {mid}", "echo")
        answer = body_of(response) if response is not None and response.code == 200 else None
        if answer is None or answer.get("layer") != "mid":
            problems.append(f"trial {trial.index}: late redelivery of {mid[-8:]} answered {answer!r}")

    jobs = []
    for trial in trials:
        mids = [s.echo_mid for s in trial.sends] + [n.mid for n in trial.natives]
        jobs += [again(trial, mid, (trial.index + k) % len(clients)) for k, mid in enumerate(mids)]
    for first in range(0, len(jobs), 200):
        await asyncio.gather(*jobs[first : first + 200])
    return problems


CHECK_CHUNK = 200


async def check_trials(db: Any, trials: list[Trial], channel_id: Any) -> list[str]:
    """Every violation of the guarantees (see the module docstring), as readable lines. Reads in
    chunks: the embedded server evaluates a long ``$in`` list slowly."""
    problems: list[str] = []
    for first in range(0, len(trials), CHECK_CHUNK):
        problems += await _check_chunk(db, trials[first : first + CHECK_CHUNK], channel_id)
    return problems


async def _check_chunk(db: Any, trials: list[Trial], channel_id: Any) -> list[str]:
    conversations = {
        c["customer_instagram_id"]: c
        for c in await db.conversations.find(
            {"channel_id": channel_id, "customer_instagram_id": {"$in": [t.customer for t in trials]}}
        ).to_list(None)
    }
    by_conversation: dict[Any, list[dict[str, Any]]] = {}
    async for message in db.messages.find({"conversation_id": {"$in": [c["_id"] for c in conversations.values()]}}):
        by_conversation.setdefault(message["conversation_id"], []).append(message)
    problems: list[str] = []
    for trial in trials:
        conversation = conversations.get(trial.customer)
        if conversation is None:
            problems.append(f"trial {trial.index}: no conversation")
            continue
        every = by_conversation.get(conversation["_id"], [])
        messages = [m for m in every if "merged_into" not in m]
        problems += [f"trial {trial.index}: {p}" for p in _check_one(trial, conversation, messages)]
    return problems


def _check_one(trial: Trial, conversation: dict[str, Any], messages: list[dict[str, Any]]) -> list[str]:
    out = []
    expected = len(trial.sends) + len(trial.natives)
    if len(messages) != expected:
        out.append(
            f"{len(messages)} messages, expected {expected} ({len(trial.sends)} sent + {len(trial.natives)} native)"
        )
    delivered = [s.echo_mid for s in trial.sends] + [n.mid for n in trial.natives]
    holders = Counter(mid for m in messages for mid in m.get("mids") or [])
    for mid in delivered:
        if holders[mid] != 1:
            out.append(f"mid {mid[-8:]} is on {holders[mid]} messages")
    stray = set(holders) - set(delivered)
    if stray:
        out.append(f"unknown mids stored: {sorted(stray)}")
    for send in trial.sends:
        mine = [m for m in messages if m.get("client_message_id") == send.client_message_id]
        if len(mine) != 1:
            out.append(f"client_message_id {send.client_message_id} on {len(mine)} messages")
            continue
        message = mine[0]
        if message["type"] != send.type or message["source"] != ("ai" if send.type == "AI" else "app"):
            out.append(f"{send.client_message_id} stored as {message['type']}/{message['source']}")
        if send.with_mids and send.echo_mid not in (message.get("mids") or []):
            out.append(f"{send.client_message_id}: its echo {send.echo_mid[-8:]} is on another message")
    if trial.sends and trial.sends[0].with_mids:
        for native in trial.natives:
            owner = [m for m in messages if native.mid in (m.get("mids") or [])]
            if owner and owner[0].get("source") != "instagram_direct":
                out.append(f"native {native.mid[-8:]} was absorbed by an outbound message despite mids")
    for message in messages:
        if message.get("content") != trial.text or message["type"] not in ("AI", "support"):
            out.append(f"unexpected message {message['_id']}: {message['type']} {message.get('content')!r}")
    applied = conversation.get("recent_message_ids") or []
    if sorted(map(str, applied)) != sorted(str(m["_id"]) for m in messages):
        out.append(f"conversation applied {len(applied)} ids for {len(messages)} messages")
    return out


_STORE_FAILURE = re.compile(r"(?:MongoDB failed[^(]*|kept changing)\(?(\w*)")


def store_failures(*log_texts: str) -> Counter:
    """Why the processes answered 503 (each is retried, as Meta and the client do), by cause."""
    found: Counter = Counter()
    for text in log_texts:
        for match in _STORE_FAILURE.finditer(text):
            found[match.group(1) or "EchoPairContention"] += 1
    return found


def seed_design_outcome(trial: Trial) -> tuple[int, int]:
    """What the seed's rules would have stored for this schedule: (extra outbound duplicates,
    lost Instagram-app messages). A model of the seed's documented behaviour (mark-sent always
    inserts; an echo is dropped when the ``instagram_sent_msg`` key exists or an outbound
    message of the same text is in the window — the key is never consumed), taking requests
    in the order they were sent. Used by the soak benchmark for comparison."""
    events = [(s.call.at, "send", None) for s in trial.sends]
    events += [(d.at, "echo", s.echo_mid) for s in trial.sends for d in s.echoes]
    events += [(d.at, "native", n.mid) for n in trial.natives for d in n.deliveries]
    events.sort(key=lambda e: e[0])
    sent = 0
    seen: set[str] = set()
    stored_echoes = 0
    lost_natives = 0
    for _, kind, mid in events:
        if kind == "send":
            sent += 1
            continue
        if mid in seen:
            continue
        seen.add(mid)
        if sent == 0:
            if kind == "echo":
                stored_echoes += 1  # stored as a message, and its mark-sent inserts another
        elif kind == "native":
            lost_natives += 1  # "key exists": dropped as the echo of a send
    return stored_echoes, lost_natives
