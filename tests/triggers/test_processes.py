"""Triggers across real ``igsync serve`` processes sharing one MongoDB: each job delivered once,
one delivery per conversation at a time, and a process killed mid-delivery loses nothing."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any

import pytest

from server.app.embedded import free_port
from tests.fakes.receiver import TriggerReceiver
from tests.support.helpers import Client, ServerProcessHandle, server_env, wait_for
from tests.support.server import make_settings
from tests.support.triggers import MessageSender, connect_with_triggers, http_triggers

pytestmark = pytest.mark.slow


def process_env(settings: Any, **extra: str) -> dict[str, str]:
    return server_env(
        settings,
        IGSYNC_TRIGGER_RETRY_BASE_SECS="0.05",
        IGSYNC_TRIGGER_RETRY_MAX_SECS="2",
        IGSYNC_TRIGGER_POLL_SECS="0.1",
        IGSYNC_TRIGGER_LEASE_MARGIN_SECS="0.5",
        # Fewer lanes at a time than conversations: both processes must take part.
        IGSYNC_TRIGGER_WORKERS="3",
        **extra,
    )


def start_process(stores: Any, tmp_path: Path, name: str, mongo_db: str | None = None) -> ServerProcessHandle:
    overrides: dict[str, Any] = {"port": free_port()}
    if mongo_db is not None:
        overrides["mongo_db"] = mongo_db
    settings = make_settings(stores, tmp_path, **overrides)
    return ServerProcessHandle(process_env(settings), tmp_path / f"{name}.log").start()


async def test_two_processes_deliver_each_job_once_in_order(stores: Any, tmp_path: Path) -> None:
    async def slow(payload: dict[str, Any], attempt: int) -> tuple[int, dict[str, str]]:
        await asyncio.sleep(0.005)
        return 200, {}

    receiver = TriggerReceiver(behaviour=slow).start()
    a = start_process(stores, tmp_path, "a")
    b = start_process(stores, tmp_path, "b", mongo_db=a.env["IGSYNC_MONGO_DB"])
    clients = [Client(a.base_url), Client(b.base_url)]
    try:
        await connect_with_triggers(clients[0], http_triggers(receiver.url))
        customers = [f"62000000000008{i:02d}" for i in range(8)]
        senders = [MessageSender(clients[0], "pa"), MessageSender(clients[1], "pb")]
        expected: dict[str, list[str]] = {c: [] for c in customers}
        for n in range(5):
            for i, customer in enumerate(customers):
                text = f"{customer}-{n}"
                await senders[(n + i) % 2].send(text, customer=customer)
                expected[customer].append(text)
        await wait_for(lambda: len(receiver.acked()) == 40, timeout=60)
        counts = receiver.ack_counts()
        assert len(counts) == 40 and set(counts.values()) == {1}, "each delivery_id exactly once"
        assert len(receiver.deliveries) == 40
        assert max(receiver.max_in_flight.values()) == 1
        got: dict[str, list[str]] = {c: [] for c in customers}
        for d in receiver.acked():
            got[d.payload["customer"]["instagram_id"]].append(d.content)
        assert got == expected
    finally:
        for client in clients:
            client.close()
        a.terminate()
        b.terminate()
        await receiver.stop()


async def test_a_process_killed_mid_delivery_leaves_the_job_to_the_other(stores: Any, tmp_path: Path) -> None:
    hang = asyncio.Event()

    async def first_attempt_hangs(payload: dict[str, Any], attempt: int) -> tuple[int, dict[str, str]]:
        if len(receiver.deliveries) == 1:
            await hang.wait()
        return 200, {}

    receiver = TriggerReceiver(behaviour=first_attempt_hangs).start()
    a = start_process(stores, tmp_path, "a")
    client_a = Client(a.base_url)
    b = None
    try:
        await connect_with_triggers(client_a, http_triggers(receiver.url, timeout_secs=1.5))
        await MessageSender(client_a).send("survives a crash")
        await wait_for(lambda: len(receiver.deliveries) == 1)
        a.terminate(signal.SIGKILL)  # mid-delivery: no chance to release its lease

        b = start_process(stores, tmp_path, "b", mongo_db=a.env["IGSYNC_MONGO_DB"])
        await wait_for(lambda: len(receiver.acked()) == 1, timeout=20)
        first, second = receiver.deliveries
        assert first.delivery_id == second.delivery_id, "the same job, delivered again (at least once)"
        assert second.content == "survives a crash"
        await wait_for(lambda: "trigger delivered" in b.output())  # igsync notes it after the receiver acks
    finally:
        hang.set()
        client_a.close()
        a.kill()
        if b is not None:
            b.terminate()
        await receiver.stop()
