"""The randomized send test: two igsync processes sharing MongoDB and Redis, sends posted to
either, and a fake Graph API that, per Send API call, emits the echo webhook before its answer,
while it answers, or after it, to either process, redelivers it, and answers at once, slowly,
or too late (the worker times out, retries, and must find the echo instead of sending again).

Every trial must end with exactly one message per send, ``sent``, holding its Instagram mid,
no Instagram-app copy in the conversation, and one Send API call per part. Replay a failure
with ``IGSYNC_SEND_SEED=<seed printed>``."""

from __future__ import annotations

import asyncio
import os
import random
from pathlib import Path
from typing import Any

import pytest
from bson import ObjectId

from models.store import mongo_client
from server.app.embedded import free_port
from tests.fakes.graph import ACCESS_TOKEN, FakeGraphApi
from tests.support.helpers import (
    ACCOUNT_ID,
    ADMIN_TOKEN,
    Client,
    ServerProcessHandle,
    body_of,
    echo_item,
    messaging_body,
    server_env,
    text_item,
    wait_for,
)
from tests.support.server import make_settings

PROCESSES = 2
CONVERSATIONS = 6
SENDS = 100
GRAPH_TIMEOUT_SECS = 1.0
ECHO_TIMINGS = ("before", "during", "after")
ANSWERS = ("fast", "fast", "slow", "too_late")


class Meta:
    """The fake Instagram: echoes each accepted message to a random process at a random moment."""

    def __init__(self, rng: random.Random, clients: list[Client]) -> None:
        self.rng = rng
        self.clients = clients
        self.echoes: list[bytes] = []
        self.tasks: list[asyncio.Task[Any]] = []
        self.plans: list[tuple[str, str]] = []

    async def deliver(self, body: bytes) -> None:
        response = await self.rng.choice(self.clients).webhook(body)
        assert response.code == 200, response.body

    async def on_send(self, request: dict[str, Any], mid: str) -> float:
        timing, answer = self.rng.choice(ECHO_TIMINGS), self.rng.choice(ANSWERS)
        if answer == "too_late":
            timing = "before"  # Instagram echoes within a second; the worker gives up later
        self.plans.append((timing, answer))
        sent = request["body"]
        body = messaging_body(echo_item(mid, sent["message"]["text"], customer=sent["recipient"]["id"]))
        self.echoes.append(body)
        if timing == "before":
            await self.deliver(body)
        else:
            lag = 0.0 if timing == "during" else self.rng.uniform(0.05, 0.4)
            self.tasks.append(asyncio.create_task(self._later(body, lag)))
        return {"fast": 0.0, "slow": 0.3, "too_late": GRAPH_TIMEOUT_SECS + 0.5}[answer]

    async def _later(self, body: bytes, lag: float) -> None:
        await asyncio.sleep(lag)  # Meta's timing, simulated; nothing waits on it for correctness
        await self.deliver(body)


@pytest.mark.slow
async def test_randomized_send_and_echo_orders_across_two_processes(stores, tmp_path: Path) -> None:
    seed = int(os.environ.get("IGSYNC_SEND_SEED") or random.randrange(2**31))
    print(f"IGSYNC_SEND_SEED={seed}")
    rng = random.Random(seed)
    graph = FakeGraphApi().start()
    settings = make_settings(
        stores,
        tmp_path,
        graph_api_url=graph.url,
        graph_api_timeout_secs=GRAPH_TIMEOUT_SECS,
        send_lease_secs=3.0,
        send_retry_base_secs=0.05,
        send_poll_secs=0.1,
    )
    processes = [
        ServerProcessHandle(server_env(settings.replace(port=free_port())), tmp_path / f"igsync-{i}.log")
        for i in range(PROCESSES)
    ]
    clients = [Client(p.base_url) for p in processes]
    meta = Meta(rng, clients)
    graph.on_send = meta.on_send
    db_client = mongo_client(settings.mongo_url or "")
    db = db_client[settings.mongo_db]
    try:
        for process in processes:
            await asyncio.to_thread(process.start)
        token, conversations = await _tenant(clients[0])
        texts = ["On its way!", "Thanks!", "Your order shipped.", "See you soon"]

        async def one(n: int) -> str:
            conversation = rng.choice(conversations)
            body = {"content": rng.choice(texts) + ("" if n % 3 else f" #{n}")}
            response = await rng.choice(clients).post(
                f"/api/v1/conversations/{conversation}/messages", body, token=token
            )
            assert response.code == 202, response.body
            return body_of(response)["message"]["id"]

        message_ids = await asyncio.gather(*(one(n) for n in range(SENDS)))

        async def all_sent() -> bool:
            done = await db.messages.count_documents({"delivery_status": "sent", "send_due_at": {"$exists": False}})
            return done == SENDS

        await wait_for(all_sent, timeout=90)
        await asyncio.gather(*meta.tasks)
        # Meta redelivers every echo again, to either process: all duplicates.
        for body in meta.echoes:
            response = await rng.choice(clients).webhook(body)
            assert body_of(response).get("duplicate") is True, (seed, response.body)
        await _check(db, message_ids, conversations, graph, seed, meta)
    finally:
        for process in processes:
            process.kill()
        for client in clients:
            client.close()
        await db_client.close()
        await graph.stop()


async def _tenant(client: Client) -> tuple[str, list[str]]:
    channel = {"page_id": ACCOUNT_ID, "username": "shop", "owner": {"id": 1, "email": "o@example.com"}}
    connected = await client.post("/api/v1/channels", {**channel, "access_token": ACCESS_TOKEN}, token=ADMIN_TOKEN)
    assert connected.code == 201, connected.body
    token = body_of(await client.post("/api/v1/tokens", {"owner_email": "o@example.com"}, token=ADMIN_TOKEN))["token"]
    conversations = []
    for n in range(CONVERSATIONS):
        customer = f"62000000000{n:05d}"
        posted = body_of(await client.webhook(messaging_body(text_item(f"m_rand_in_{n}", "hi", sender=customer))))
        conversations.append(posted["data"]["conversation"]["id"])
    return token, conversations


async def _check(
    db: Any, message_ids: list[str], conversations: list[str], graph: FakeGraphApi, seed: int, meta: Meta
) -> None:
    context = f"seed {seed}, plans {meta.plans}"
    calls = len(graph.sends)
    assert calls == len(message_ids), f"{calls} Send API calls for {len(message_ids)} sends; {context}"
    for message_id in message_ids:
        doc = await db.messages.find_one({"_id": ObjectId(message_id)})
        assert doc["delivery_status"] == "sent" and doc["mid"], (doc, context)
        assert doc["send"]["parts"][0]["mid"] == doc["mid"], (doc, context)
    visible = await db.messages.count_documents(
        {"conversation_id": {"$in": [ObjectId(c) for c in conversations]}, "merged_into": {"$exists": False}}
    )
    natives = await db.messages.count_documents({"source": "instagram_direct", "merged_into": {"$exists": False}})
    assert natives == 0, f"{natives} echoes stored as Instagram-app messages; {context}"
    assert visible == len(message_ids) + len(conversations), context


@pytest.mark.slow
async def test_a_process_killed_inside_the_send_api_call_is_replaced_and_instagram_gets_it_once(
    stores, tmp_path: Path
) -> None:
    """kill -9 of the process whose worker is inside the Send API call (Instagram accepted the
    message and echoed it, the answer never came back); another process takes the send over after
    the lease, finds the echo, and does not call Instagram again."""
    graph = FakeGraphApi().start()
    settings = make_settings(
        stores, tmp_path, graph_api_url=graph.url, graph_api_timeout_secs=2.0, send_lease_secs=3.0, send_poll_secs=0.1
    )
    first = ServerProcessHandle(server_env(settings.replace(port=free_port())), tmp_path / "first.log")
    second = ServerProcessHandle(server_env(settings.replace(port=free_port())), tmp_path / "second.log")
    clients = [Client(first.base_url), Client(second.base_url)]
    db_client = mongo_client(settings.mongo_url or "")
    db = db_client[settings.mongo_db]
    in_the_call = asyncio.Event()

    async def accept_echo_then_hang(request: dict[str, Any], mid: str) -> float:
        sent = request["body"]
        echo = messaging_body(echo_item(mid, sent["message"]["text"], customer=sent["recipient"]["id"]))
        assert (await clients[0].webhook(echo)).code == 200  # Instagram accepted it and echoed it
        in_the_call.set()
        return 60.0  # the answer never reaches the worker

    graph.on_send = accept_echo_then_hang
    try:
        await asyncio.to_thread(first.start)
        token, conversations = await _tenant(clients[0])
        response = await clients[0].post(
            f"/api/v1/conversations/{conversations[0]}/messages", {"content": "exactly once"}, token=token
        )
        assert response.code == 202, response.body
        message_id = ObjectId(body_of(response)["message"]["id"])
        await wait_for(in_the_call.is_set, timeout=20)
        first.kill()  # SIGKILL, inside the Send API call
        await asyncio.to_thread(second.start)

        async def sent() -> dict[str, Any] | None:
            doc = await db.messages.find_one({"_id": message_id})
            return doc if doc and doc.get("delivery_status") == "sent" else None

        doc = await wait_for(sent, timeout=30)
        assert len(graph.sends) == 1, graph.sends  # one call reached Instagram
        assert doc["send"]["parts"][0]["mid"] == doc["mid"] and doc["send"]["claims"] == 2
    finally:
        first.kill()
        second.kill()
        for client in clients:
            client.close()
        await db_client.close()
        await graph.stop()
