"""The fault rig: igsync as a real process on its own stores, a Meta-like sender, and WebSocket
clients that resume — then a fault, and an account of what was lost.

* :class:`FaultRig` starts its own SecantusDB and Redis (so that killing them touches no other
  test) and ``igsync serve`` as a child process; it can kill, freeze and restart each of them.
* :class:`MetaSender` posts signed webhooks at a steady rate, each with a new mid, and — as
  Meta does — posts again whatever was not answered ``200`` (503, a refused connection, a
  timeout) with backoff, until it is. What was answered ``200`` is *acknowledged*: Meta never
  sends it again, so it must be stored. Any answer other than 200, 503 or "no answer" is a defect.
* :class:`ResumingSocket` stays subscribed to the channel: when its socket drops it reconnects
  with ``since_seq`` and ``epoch``; on ``resync_required`` (or a position it cannot resume
  from) it reloads the conversations by REST, as API.md §4 tells clients to.

:meth:`FaultRig.account` compares the three: acknowledged but not stored (lost), stored more
than once (duplicated), acknowledged but never seen by a socket nor reloaded after a resync
(missed). Every count must be 0.
"""

from __future__ import annotations

import asyncio
import os
import signal
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tornado.httpclient import HTTPClientError

from models.store import Store
from server.app.embedded import EmbeddedStores, free_port
from tests.support.helpers import (
    ServerProcessHandle,
    body_of,
    messaging_body,
    server_env,
    text_item,
    wait_for,
)
from tests.support.realtime import WsClient
from tests.support.server import connect_tenant, make_settings

CUSTOMERS = [f"63000000000{n:05d}" for n in range(5)]
# Statuses Meta's retry covers: 503 (store down, draining), 0/599 (no answer: refused, reset, timed out).
RETRIED = {503, 599, 0}


@dataclass
class Account:
    acknowledged: int
    lost: list[str]
    duplicated: list[str]
    missed: dict[str, list[str]]
    bad_statuses: Counter
    statuses: Counter
    resyncs: int
    reconnects: int
    # Within one epoch a socket must see seq n+1 after n (a jump is an event missed without a
    # resync); every socket must see the same event at the same (epoch, seq) (else a seq was reused).
    gaps: int = 0
    conflicts: int = 0

    def summary(self) -> str:
        """One line for the test's output and docs/reliability.md."""
        missed = sum(len(v) for v in self.missed.values())
        return (
            f"acknowledged={self.acknowledged} lost={len(self.lost)} duplicated={len(self.duplicated)} "
            f"missed_events={missed} bad_statuses={dict(self.bad_statuses)} statuses={dict(self.statuses)} "
            f"socket_reconnects={self.reconnects} resyncs={self.resyncs} gaps={self.gaps} conflicts={self.conflicts}"
        )


class MetaSender:
    """Signed webhooks at ``rate_per_sec``, each retried until answered 200."""

    def __init__(self, rig: FaultRig, *, rate_per_sec: float) -> None:
        self.rig = rig
        self.interval = 1.0 / rate_per_sec
        self.acknowledged: set[str] = set()
        self.statuses: Counter = Counter()
        self.bad: Counter = Counter()
        self._tasks: list[asyncio.Task[None]] = []
        self._stop = asyncio.Event()
        self._runner: asyncio.Task[None] | None = None
        self.sent = 0

    def start(self) -> None:
        self._runner = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        n = 0
        while not self._stop.is_set():
            mid = f"aWdf_fault_{uuid.uuid4().hex}"
            customer = CUSTOMERS[n % len(CUSTOMERS)]
            self._tasks.append(asyncio.ensure_future(self._deliver(mid, customer, n)))
            n += 1
            self.sent = n
            # Pacing the load (a rate), not ordering anything: correctness never waits on it.
            await asyncio.sleep(self.interval)

    async def _deliver(self, mid: str, customer: str, n: int) -> None:
        body = messaging_body(text_item(mid, f"fault load {n}", sender=customer))
        backoff = 0.1
        while True:
            client = self.rig.http_client()
            try:
                response = await client.webhook(body, timeout=10)
                code = response.code
            except HTTPClientError as exc:  # a timeout is raised even with raise_error=False
                code = exc.code
            except OSError:
                code = 0
            finally:
                client.close()
            self.statuses[code] += 1
            if code == 200:
                self.acknowledged.add(mid)
                return
            if code not in RETRIED:
                self.bad[code] += 1
            # Meta's own backoff, shortened: the redelivery is what makes a 503 safe.
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 1.0)

    async def abort(self) -> None:
        """A failed test: stop every delivery now (they would retry forever)."""
        self._stop.set()
        tasks = [*self._tasks, *([self._runner] if self._runner else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def stop(self, timeout: float = 60) -> None:
        """Stop sending new webhooks; wait until every one sent was acknowledged."""
        self._stop.set()
        assert self._runner is not None
        await self._runner
        await asyncio.wait_for(asyncio.gather(*self._tasks), timeout)


@dataclass
class ResumingSocket:
    rig: FaultRig
    seen: set[str] = field(default_factory=set)
    reloaded: set[str] = field(default_factory=set)
    resyncs: int = 0
    reconnects: int = 0
    epoch: str | None = None
    last_seq: int | None = None
    gaps: int = 0
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            await asyncio.wait_for(self._task, 30)

    async def abort(self) -> None:
        self._stop.set()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        while not self._stop.is_set():
            try:
                ws = await WsClient.connect(self.rig.base_url, self.rig.token)
            except Exception:
                await asyncio.sleep(0.1)  # igsync is down: try again, as a browser would
                continue
            try:
                await self._follow(ws)
            except Exception:
                pass
            finally:
                ws.close()
            if not self._stop.is_set():
                self.reconnects += 1  # the socket dropped (not our own stop)

    async def _follow(self, ws: WsClient) -> None:
        resume: dict[str, Any] = {}
        if self.epoch is not None and self.last_seq is not None:
            resume = {"since_seq": self.last_seq, "epoch": self.epoch}
        await ws.send({"action": "subscribe", "channel_id": self.rig.channel_id, **resume})
        while not self._stop.is_set():
            try:
                frame = await ws.recv(timeout=0.5)
            except TimeoutError:
                continue
            if frame is None:
                return
            await self._on_frame(frame)

    async def _on_frame(self, frame: dict[str, Any]) -> None:
        event = frame.get("event")
        if event == "subscribed":
            if frame.get("epoch") is None:
                await self._reload()  # the log cannot be reached: no position to resume from
            elif frame.get("epoch") != self.epoch or self.last_seq is None:
                if self.epoch is not None:
                    await self._reload()
                self.epoch, self.last_seq = frame["epoch"], frame["latest_seq"]
            return
        if event == "resync_required":
            data = frame.get("data") or {}
            self.epoch = data.get("epoch") or self.epoch
            self.last_seq = data.get("latest_seq")
            await self._reload()
            return
        seq = frame.get("seq")
        if seq is not None:
            if self.last_seq is not None and seq != self.last_seq + 1:
                self.gaps += 1
            self.last_seq = seq
            self.rig.note_position(self.epoch, seq, frame)
        if event == "chat_message":
            mid = (frame["data"]["message"] or {}).get("mid")
            if mid:
                self.seen.add(mid)

    async def _reload(self) -> None:
        """What a client does on resync_required: load the conversations again by REST."""
        self.resyncs += 1
        client = self.rig.http_client()
        try:
            for _ in range(50):
                try:
                    self.reloaded |= await _all_mids(client, self.rig.token)
                    return
                except Exception:
                    await asyncio.sleep(0.2)  # igsync or its store still down
        finally:
            client.close()


async def _all_mids(client: Any, token: str) -> set[str]:
    mids: set[str] = set()
    response = await client.get("/api/v1/conversations?limit=100", token=token)
    assert response.code == 200, response.code
    for conversation in body_of(response)["conversations"]:
        before = ""
        while True:
            query = f"limit=100{'&before=' + before if before else ''}"
            page = await client.get(f"/api/v1/conversations/{conversation['id']}/messages?{query}", token=token)
            assert page.code == 200, page.code
            body = body_of(page)
            mids |= {m["mid"] for m in body["messages"] if m.get("mid")}
            if not body["has_more"] or not body["messages"]:
                break
            before = body["messages"][0]["id"]
    return mids


class FaultRig:
    """Own stores + one igsync process, and the means to break each of them."""

    def __init__(self, work_dir: Path, *, redis_topology: Any = None, **settings: Any) -> None:
        self.work_dir = work_dir
        # On a Redis topology of the test's own (tests/support/redis_topologies.py), no embedded Redis.
        self.redis_topology = redis_topology
        self.stores = EmbeddedStores(work_dir / "stores", redis=redis_topology is None, lock=False)
        self.extra_settings = {**(redis_topology.settings() if redis_topology else {}), **settings}
        # (epoch, seq) → the first frame a socket saw there
        self.positions: dict[tuple[str | None, int], dict[str, Any]] = {}
        self.conflicts = 0
        self.handle: ServerProcessHandle | None = None
        self.token = ""
        self.channel_id = ""
        self.lives = 0

    # -- life --------------------------------------------------------------------------

    def start(self) -> FaultRig:
        self.stores.start()
        self.settings = make_settings(
            self.stores, self.work_dir, port=free_port(), store_timeout_ms=1500, **self.extra_settings
        )
        self.base_url = f"http://127.0.0.1:{self.settings.port}"
        self.start_igsync()
        return self

    def start_igsync(self) -> None:
        self.lives += 1
        env = server_env(self.settings, IGSYNC_REALTIME_REDIS_TIMEOUT_MS="300")
        self.handle = ServerProcessHandle(env, self.work_dir / f"igsync-{self.lives}.log").start(timeout=60)

    def stop(self) -> None:
        if self.handle is not None:
            self.handle.kill()
        for child in (self.stores._mongo, self.stores._redis):
            if child is not None and child.proc is not None:
                os.kill(child.proc.pid, signal.SIGCONT)
        self.stores.stop()

    def http_client(self) -> Any:
        from tests.support.helpers import Client

        return Client(self.base_url)

    async def connect(self) -> None:
        client = self.http_client()
        try:
            tenant = await connect_tenant(client)
        finally:
            client.close()
        self.token = tenant.token
        self.channel_id = tenant.channel["id"]

    def note_position(self, epoch: str | None, seq: int, frame: dict[str, Any]) -> None:
        """What a socket saw at (epoch, seq): another event there on another socket is a reused seq."""
        first = self.positions.setdefault((epoch, seq), frame)
        if first is not frame and first != frame:
            self.conflicts += 1

    # -- faults ------------------------------------------------------------------------

    def kill_igsync(self, sig: int) -> int:
        assert self.handle is not None and self.handle.proc is not None
        self.handle.proc.send_signal(sig)
        code = self.handle.proc.wait(60)
        self.handle.kill()
        return code

    def kill_mongo(self) -> None:
        child = self.stores._mongo
        assert child is not None and child.proc is not None
        child.proc.kill()
        child.proc.wait()
        self.stores.start_mongo(child.port)

    def kill_redis(self) -> None:
        """Redis dies and comes back empty (no persistence): every log, key and mark gone."""
        child = self.stores._redis
        assert child is not None and child.proc is not None
        child.proc.kill()
        child.proc.wait()
        self.stores.start_redis(child.port)

    def freeze(self, which: str) -> int:
        child = self.stores._mongo if which == "mongo" else self.stores._redis
        assert child is not None and child.proc is not None
        os.kill(child.proc.pid, signal.SIGSTOP)
        return child.proc.pid

    # -- the account -------------------------------------------------------------------

    async def account(self, sender: MetaSender, sockets: list[ResumingSocket]) -> Account:
        store = Store(self.settings.mongo_url or "", self.settings.mongo_db)
        try:
            wanted = {"$in": sorted(sender.acknowledged)}
            rows = await store.db.messages.aggregate(
                [
                    {"$match": {"mids": wanted}},
                    {"$unwind": "$mids"},
                    {"$match": {"mids": wanted}},
                    {"$group": {"_id": "$mids", "n": {"$sum": 1}}},
                ]
            )
            counts = {row["_id"]: row["n"] async for row in rows}
        finally:
            await store.close()
        lost = sorted(m for m in sender.acknowledged if m not in counts)
        duplicated = sorted(m for m, n in counts.items() if n > 1)
        missed = {
            f"socket{i}": sorted(m for m in sender.acknowledged if m not in s.seen and m not in s.reloaded)
            for i, s in enumerate(sockets)
        }
        return Account(
            acknowledged=len(sender.acknowledged),
            lost=lost,
            duplicated=duplicated,
            missed={k: v for k, v in missed.items() if v},
            bad_statuses=sender.bad,
            statuses=sender.statuses,
            resyncs=sum(s.resyncs for s in sockets),
            reconnects=sum(s.reconnects for s in sockets),
            gaps=sum(s.gaps for s in sockets),
            conflicts=self.conflicts,
        )


async def wait_acknowledged(sender: MetaSender, count: int, timeout: float = 30) -> None:
    """Until ``count`` more webhooks than now are acknowledged (load is flowing)."""
    target = len(sender.acknowledged) + count
    await wait_for(lambda: len(sender.acknowledged) >= target, timeout=timeout)


async def settle(sockets: list[ResumingSocket], sender: MetaSender, timeout: float = 30) -> None:
    """Until every socket has seen or reloaded every acknowledged message (or the timeout:
    then the account names what is missing)."""

    def done() -> bool:
        return all(sender.acknowledged <= (s.seen | s.reloaded) for s in sockets)

    try:
        await wait_for(done, timeout=timeout)
    except AssertionError:
        pass
