"""Gap repair: MongoDB stopped for longer than (a fake) Meta keeps redelivering; when it is back,
the heartbeat sees the gap and the conversations active since it began are read again from the
Conversations API — every message present afterwards, once, announced like a webhook's."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from pymongo.errors import PyMongoError

from server.app.embedded import EmbeddedStores
from tests.support.events import events_env
from tests.support.helpers import ACCOUNT_ID, CUSTOMER_A, messaging_body, text_item, wait_for

NEW_CUSTOMER = "6200000000000999"
# Meta's redelivery, shortened: a webhook not answered 200 is posted again for this long, then dropped.
META_RETRIES_FOR_SECS = 0.5
# igsync's assumption about it (IGSYNC_META_RETRY_WINDOW_SECS): a longer outage is repaired.
RETRY_WINDOW_SECS = 1.0


async def deliver_like_meta(env: Any, body: bytes) -> bool:
    """Post until answered 200 or Meta's retries run out; whether it was acknowledged."""
    deadline = time.monotonic() + META_RETRIES_FOR_SECS
    while True:
        response = await env.client.webhook(body, timeout=5)
        if response.code == 200:
            return True
        if time.monotonic() > deadline:
            return False


async def test_messages_meta_gave_up_on_during_a_store_outage_are_repaired_once(tmp_path: Path) -> None:
    own = EmbeddedStores(tmp_path / "stores", lock=False).start()
    overrides = dict(
        heartbeat_secs=0.1,
        meta_retry_window_secs=RETRY_WINDOW_SECS,
        history_concurrency=1,
        history_calls_per_sec=1000.0,
        history_lease_secs=5.0,
        store_timeout_ms=500,
    )
    try:
        async with events_env(own, tmp_path / "server", **overrides) as env:
            now = int(time.time())
            assert await deliver_like_meta(env, messaging_body(text_item("aWdf_pre_1", "before", sender=CUSTOMER_A)))

            mongo = own._mongo
            assert mongo is not None and mongo.proc is not None
            mongo.proc.kill()
            mongo.proc.wait()
            stopped = time.monotonic()
            lost = [
                ("aWdf_gap_1", "during the outage", CUSTOMER_A),
                ("aWdf_gap_2", "still nobody?", CUSTOMER_A),
                ("aWdf_gap_3", "hello, new here", NEW_CUSTOMER),
            ]
            for mid, text, sender in lost:
                assert not await deliver_like_meta(env, messaging_body(text_item(mid, text, sender=sender)))
            # Meta has them all; it will not post them again.
            env.graph.add_conversation(
                "t_a",
                CUSTOMER_A,
                ACCOUNT_ID,
                [("aWdf_pre_1", "before", now), ("aWdf_gap_1", "during the outage", now + 1),
                 ("aWdf_gap_2", "still nobody?", now + 2)],
            )  # fmt: skip
            env.graph.add_conversation("t_new", NEW_CUSTOMER, ACCOUNT_ID, [("aWdf_gap_3", "hello, new here", now + 3)])
            await wait_for(lambda: time.monotonic() - stopped > RETRY_WINDOW_SECS * 1.5, timeout=10)
            await env.clear_events()
            own.start_mongo(mongo.port)

            async def repaired() -> Any:
                try:
                    runs = await env.core.store.db.history_runs.find({"mode": "repair", "state": "done"}).to_list(None)
                except PyMongoError:
                    return None  # the client is still finding the restarted store
                return runs or None

            [run] = await wait_for(repaired, timeout=60)
            assert run["counts"]["stored"] == 3 and run["counts"]["duplicate"] == 1
            rows = await env.core.store.db.messages.find({}, {"mids": 1, "imported": 1, "type": 1}).to_list(None)
            mids = sorted(m for row in rows for m in row["mids"])
            assert mids == ["aWdf_gap_1", "aWdf_gap_2", "aWdf_gap_3", "aWdf_pre_1"]
            assert sorted(row.get("imported") or "-" for row in rows) == ["-", "repair", "repair", "repair"]
            # Announced like any new message, and the new customer's conversation exists.
            announced = {e.data["message"]["mid"] for e in env.events("chat_message")}
            assert announced == {"aWdf_gap_1", "aWdf_gap_2", "aWdf_gap_3"}
            assert await env.core.store.db.conversations.count_documents({}) == 2
            metrics = (await env.client.get("/metrics")).body
            assert b"igsync_messages_repaired_total 3.0" in metrics
            # Unread and needs-reply like webhook messages: the business has not seen them.
            conversation = await env.core.store.db.conversations.find_one({"customer.instagram_id": NEW_CUSTOMER})
            assert conversation["unread_count"] == 1 and conversation["status"] == "needs_reply"
            [gap] = await env.core.store.heartbeats.list_gaps()
            assert gap["reason"] == "outage" and (gap["end"] - gap["start"]).total_seconds() > RETRY_WINDOW_SECS
    finally:
        own.stop()
