"""History import: messages imported per second, against Meta's rate limit as the floor.

Run: ``.venv/bin/python -m bench.backfill [--conversations 50] [--limited-conversations 2]``.

A fake Conversations API (a real local HTTP server in this process, the tests' fake) holds an
account of N conversations of 20 messages. Per conversation igsync makes 1 call for the message
list and 1 per message detail: 21 calls for 20 messages. At Meta's limit of R calls per second
per account the floor — the best any importer can do — is R × 20/21 messages per second. Two runs:

* **at Meta's limit** (``IGSYNC_HISTORY_CALLS_PER_SEC=2``, a small account): messages/s and its
  ratio to the floor (1.00 = the limit is the only cost);
* **unlimited** (the calls only wait for the fake): what igsync itself stores per second on the
  embedded store — how far above the floor igsync's own work is.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

from server.app.core import build_core
from server.app.embedded import EmbeddedStores
from server.inbox.events import NullSink
from tests.fakes.graph import ACCESS_TOKEN, FakeGraphApi
from tests.support.server import make_settings

ACCOUNT = "17841400000000888"
PER_THREAD = 20


def fill(graph: FakeGraphApi, conversations: int, prefix: str) -> None:
    start = int(time.time()) - 86400
    for c in range(conversations):
        texts = [(f"aWdf_{prefix}_{c}_{m}", f"message {m} of {c}", start + c * 100 + m) for m in range(PER_THREAD)]
        graph.add_conversation(f"t_{prefix}_{c}", str(6_400_000_000_000_000 + c), ACCOUNT, texts)


async def one_run(stores: EmbeddedStores, work: Path, conversations: int, calls_per_sec: float) -> dict[str, Any]:
    graph = FakeGraphApi().start()
    graph.page_size = 25
    fill(graph, conversations, f"r{int(calls_per_sec)}")
    settings = make_settings(
        stores,
        work,
        graph_api_url=graph.url,
        facebook_graph_api_url=graph.url,
        history_calls_per_sec=calls_per_sec,
        history_concurrency=0,
        profile_concurrency=1,
    )
    core = await build_core(settings, sink=NullSink())
    try:
        payload = {"page_id": ACCOUNT, "username": "bench", "owner": {"id": 1, "email": "b@example.com"}}
        _, body = await core.accounts.connect_channel({**payload, "access_token": ACCESS_TOKEN}, subscribe_now=True)
        channel = await core.accounts.channel(body["channel"]["id"])
        run = await core.accounts.queue_backfill(channel, None)
        claimed = await core.store.history_runs.claim("bench", 600, run["_id"])
        assert claimed is not None
        started = time.perf_counter()
        result = await core.history.importer.execute(claimed)
        elapsed = time.perf_counter() - started
    finally:
        await core.close()
        await graph.stop()
    stored = result["messages"]["stored"]
    assert stored == conversations * PER_THREAD, result
    return {"stored": stored, "calls": result["calls"], "secs": elapsed, "per_sec": stored / elapsed}


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        stores = EmbeddedStores(Path(tmp) / "stores", lock=False).start()
        try:
            limited = await one_run(stores, Path(tmp) / "a", args.limited_conversations, args.rate)
            unlimited = await one_run(stores, Path(tmp) / "b", args.conversations, 100_000.0)
        finally:
            stores.stop()
    floor = args.rate * PER_THREAD / (PER_THREAD + 1)
    print(f"history import, {PER_THREAD} messages per conversation, 21 calls per conversation")
    print(
        f"  at Meta's limit ({args.rate:g} calls/s): {limited['stored']} messages in {limited['secs']:.1f} s = "
        f"{limited['per_sec']:.2f} msg/s; floor {floor:.2f} msg/s; ratio {limited['per_sec'] / floor:.2f}"
    )
    print(
        f"  unlimited: {unlimited['stored']} messages in {unlimited['secs']:.1f} s = {unlimited['per_sec']:.0f} msg/s "
        f"({unlimited['calls']} calls) = {unlimited['per_sec'] / floor:.0f}x the floor at Meta's limit"
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conversations", type=int, default=50, help="conversations of the unlimited run")
    parser.add_argument("--limited-conversations", type=int, default=2, help="conversations at Meta's limit")
    parser.add_argument("--rate", type=float, default=2.0, help="Meta's calls per second per account")
    return parser.parse_args(argv)


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
