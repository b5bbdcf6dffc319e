"""The send and media worker pools: an idle pool polls its queue from one loop only, and a
backlog queued by another process (no wake here) is still taken N at a time — each loop that
claims work wakes its peers."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from models.media_jobs import MediaJobRepository
from models.outbound import OutboundRepository
from models.timeutil import utcnow
from server.outbound.worker import QUEUE_GAUGE_SECS
from tests.fakes.cdn import JPEG
from tests.fakes.graph import GraphAnswer
from tests.outbound.test_send import SEND_SETTINGS, open_conversation, send, settled
from tests.support.events import EventsEnv, events_env, fixture_with
from tests.support.helpers import body_of, wait_for
from tests.support.server import start_server, stop_server

POOL = 4


class ClaimSpy:
    """Who called ``claim`` on a repository class, from the start of the test: (repository,
    task name) in order. On the class, so a process's first claims are seen whenever its
    loops make them."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, repository: type) -> None:
        self.calls: list[tuple[Any, str]] = []
        claim: Callable[..., Awaitable[Any]] = repository.claim  # type: ignore[attr-defined]

        async def spied(owner: Any, *args: Any, **kwargs: Any) -> Any:
            task = asyncio.current_task()
            self.calls.append((owner, task.get_name() if task is not None else ""))
            return await claim(owner, *args, **kwargs)

        monkeypatch.setattr(repository, "claim", spied)

    def by_task(self, owner: Any) -> Counter[str]:
        return Counter(name for who, name in self.calls if who is owner)


@pytest.fixture
async def idle(stores: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    spies = ClaimSpy(monkeypatch, OutboundRepository), ClaimSpy(monkeypatch, MediaJobRepository)
    fast = dict(send_concurrency=POOL, send_poll_secs=0.02, media_concurrency=POOL, media_poll_secs=0.02)
    async with events_env(stores, tmp_path, **fast) as env:
        yield env, spies


async def test_an_idle_pool_polls_from_one_loop_only(idle: tuple[EventsEnv, tuple[ClaimSpy, ClaimSpy]]) -> None:
    env, (sends, media) = idle
    for spy, owner in ((sends, env.core.store.outbound), (media, env.core.store.media_jobs)):
        # Every loop claims when it starts; the role of poller may move while they do.
        await wait_for(lambda spy=spy, owner=owner: len(spy.by_task(owner)) == POOL, timeout=10)
        await wait_for(lambda spy=spy, owner=owner: max(spy.by_task(owner).values()) >= 6, timeout=10)
        before = spy.by_task(owner)
        # Then twenty polls, all by one loop (with every loop polling, about five each).
        await wait_for(
            lambda spy=spy, owner=owner, before=before: spy.by_task(owner).total() >= before.total() + 20, timeout=15
        )
        polled = spy.by_task(owner) - before
        assert len(polled) == 1, polled


async def test_a_queued_send_is_taken_at_once_by_an_idle_pool(idle: tuple[EventsEnv, Any]) -> None:
    """The wake of a send queued here reaches the pool's waiting loops (the poll is 20 ms;
    the wait allows far more, so this shows the wake's path, not the poll's)."""
    env = idle[0]
    conversation_id = await open_conversation(env)
    response = await send(env, conversation_id, {"content": "Right away."})
    assert response.code == 202, response.body
    doc = await settled(env, body_of(response)["message"]["id"])
    assert doc["delivery_status"] == "sent"


async def worker_pool(env: EventsEnv, spy: ClaimSpy, owner_of: Callable[[Any], Any], size: int, **settings: Any) -> Any:
    """A second process on the same store whose pool of ``size`` loops is idle: each loop
    made its first claim and now waits (only the first polls), so work queued from here on
    reaches the other loops only through their peers' wakes — this process's webhooks and
    sends do not wake it."""
    worker = await start_server(env.core.settings.replace(**settings))
    await wait_for(lambda: len(spy.by_task(owner_of(worker))) == size, timeout=10)
    return worker


async def test_a_media_backlog_from_another_process_is_downloaded_pool_wide(
    stores: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spy = ClaimSpy(monkeypatch, MediaJobRepository)
    async with events_env(stores, tmp_path, media_concurrency=0) as env:
        worker = await worker_pool(
            # Timeouts far above the pool's pick-up time: the check below tells "in turn" by them.
            env, spy, lambda w: w.core.store.media_jobs, 3, media_concurrency=3, media_poll_secs=0.05,
            media_timeout_secs=6.0, media_lease_secs=10.0,
        )  # fmt: skip
        gate = asyncio.Event()
        names = [f"backlog-{n}" for n in range(3)]
        try:
            for name in names:
                url = env.cdn.add(name, body=JPEG, content_type="image/jpeg", gate=gate)
                await env.post(fixture_with("customer_image", urls=[url], mid=f"mid-{name}"))
            # The first loop finds the backlog by polling; each claim wakes a peer, so all
            # three downloads are in flight at once (the CDN holds them until all arrived).
            await wait_for(lambda: all(env.cdn.count(name) >= 1 for name in names), timeout=10)
            gate.set()

            async def all_done() -> bool:
                jobs = await env.core.store.media_jobs.coll.find({}).to_list(None)
                return len(jobs) == 3 and all(job["state"] == "completed" for job in jobs) and jobs

            # Each at its first attempt: one loop taking them in turn would have timed out on
            # the first (held by the CDN) before it took the next.
            assert [job["attempts"] for job in await wait_for(all_done, timeout=10)] == [1, 1, 1]
        finally:
            gate.set()
            await stop_server(worker, drop=False)


async def test_a_send_backlog_from_another_process_is_sent_pool_wide(
    stores: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spy = ClaimSpy(monkeypatch, OutboundRepository)
    async with events_env(stores, tmp_path, **{**SEND_SETTINGS, "send_concurrency": 0}) as env:
        conversations = [await open_conversation(env, f"62000000000009{n:02d}") for n in range(3)]
        worker = await worker_pool(
            # Timeouts far above the pool's pick-up time: the check below tells "in turn" by them.
            env,
            spy,
            lambda w: w.core.store.outbound,
            3,
            send_concurrency=3,
            graph_api_timeout_secs=6.0,
            send_lease_secs=10.0,
        )
        gate = asyncio.Event()
        env.graph.send_answers = [GraphAnswer(gate=gate) for _ in range(3)]
        try:
            queued = []
            for n, conversation_id in enumerate(conversations):
                response = await send(env, conversation_id, {"content": f"Backlog {n}"})
                assert response.code == 202, response.body
                queued.append(body_of(response)["message"]["id"])
            # Three Send API calls held open at once: the worker's whole pool.
            await wait_for(lambda: len(env.graph.sends) == 3, timeout=10)
            gate.set()
            for message_id in queued:
                assert (await settled(env, message_id))["delivery_status"] == "sent"
            # Each sent once: one loop taking them in turn would have timed out on the first
            # (held open) and sent it again.
            assert len(env.graph.sends) == 3, [(r["n"], r["body"]["message"]) for r in env.graph.sends]
        finally:
            gate.set()
            await stop_server(worker, drop=False)


async def test_the_queue_gauge_counts_sends_queued_anywhere(idle: tuple[EventsEnv, Any]) -> None:
    """``igsync_send_queue_depth``: every pending send of every process, counted by the idle
    pool (at most every ``QUEUE_GAUGE_SECS``)."""
    env = idle[0]
    registry = env.core.metrics.registry
    await wait_for(lambda: registry.get_sample_value("igsync_send_queue_depth") == 0, timeout=10)
    # A send due later (a retry another process scheduled): waiting, not claimable yet.
    later = utcnow() + dt.timedelta(hours=1)
    await env.core.store.db.messages.insert_one({"channel_id": env.channel_oid, "send_due_at": later})
    await wait_for(lambda: registry.get_sample_value("igsync_send_queue_depth") == 1, timeout=QUEUE_GAUGE_SECS * 3)
