"""History import from the Conversations API (a real local fake with paging and Meta's 20-message
detail limit): every message Meta details stored once, as the webhook would have stored it;
idempotent, resumable, within the account's call rate, quiet (no notifications, no triggers)."""

from __future__ import annotations

import asyncio
import datetime as dt
import sys
import time
from collections import Counter
from typing import Any

import orjson
import pytest
from bson import ObjectId

from models import history_runs as runs_model
from server.accounts.history import messaging_of
from tests.accounts.conftest import customer_id, fill_history
from tests.fakes.graph import GraphAnswer, meta_error
from tests.support.events import EventsEnv
from tests.support.fixtures_triggers import cli
from tests.support.helpers import (
    ACCOUNT_ID,
    ADMIN_TOKEN,
    ROOT,
    body_of,
    messaging_body,
    server_env,
    text_item,
    wait_for,
)


async def backfill(env: EventsEnv, **run_kwargs: Any) -> dict[str, Any]:
    """Queue the channel's history import and run it in this process to its end."""
    channel = await env.core.accounts.channel(env.channel["id"])
    run = await env.core.accounts.queue_backfill(channel, run_kwargs.get("since"))
    claimed = await env.core.store.history_runs.claim("test", 60, run["_id"])
    assert claimed is not None
    return await env.core.history.importer.execute(claimed, should_stop=run_kwargs.get("should_stop", lambda: False))


async def stored_mids(env: EventsEnv) -> Counter:
    rows = await env.core.store.db.messages.find({"channel_id": env.channel_oid}, {"mids": 1}).to_list(None)
    return Counter(m for row in rows for m in row.get("mids") or [])


def detailed_mids(conversations: int, messages: int) -> set[str]:
    """What Meta details: each thread's 20 most recent."""
    return {f"aWdf_hist_{c}_{m}" for c in range(conversations) for m in range(max(0, messages - 20), messages)}


async def test_a_fifty_conversation_account_is_imported_once_and_a_second_run_stores_nothing(env: EventsEnv) -> None:
    fill_history(env.graph, 50, 30)
    # A message a webhook stored before the import: the import finds it, never a second copy.
    await env.post(messaging_body(text_item("aWdf_hist_7_29", "question 29 in 7", sender=customer_id(7))))
    await env.clear_events()

    first = await backfill(env)
    assert first["state"] == "done", first
    assert first["conversations"] == {"done": 50, "total": 50, "listed": True}
    assert first["messages"]["stored"] == 50 * 20 - 1 and first["messages"]["duplicate"] == 1
    assert first["messages"]["not_detailed"] == 50 * 5  # listed on the first page, beyond the 20
    mids = await stored_mids(env)
    assert set(mids) == detailed_mids(50, 30) and max(mids.values()) == 1
    # Meta's 20-message limit is kept: no older message was asked for.
    assert all(int(mid.rsplit("_", 1)[1]) >= 10 for mid in env.graph.detail_calls())

    # Direction, customer and conversation exactly as the webhook path: one conversation per customer.
    conversations = await env.core.store.db.conversations.find({"channel_id": env.channel_oid}).to_list(None)
    assert len(conversations) == 50
    sample = await env.core.store.db.messages.find_one({"mid": "aWdf_hist_3_29"})
    assert sample["type"] == "support" and sample["source"] == "instagram_direct"  # m % 3 == 2: the business's
    assert sample["content"] == "owner: reply 29 in 3" and sample["imported"] == "backfill"
    customer = await env.core.store.customers.get(sample["customer_id"])
    assert customer["instagram_id"] == customer_id(3)
    inbound = await env.core.store.db.messages.find_one({"mid": "aWdf_hist_3_28"})
    assert inbound["type"] == "customer" and inbound["sent_at"] < sample["sent_at"]
    assert inbound["is_answered"] is True  # the business's later reply answered it
    # Old messages: no unread counts, no notifications or message events, no workflow triggers.
    assert sum(c.get("unread_count", 0) for c in conversations) == 1  # the webhook's message only
    assert [e.name for e in env.events() if e.name in ("chat_message", "new_customer_message")] == []
    assert await env.core.store.db.trigger_jobs.count_documents({}) == 0
    assert await env.core.store.db.messages.count_documents({"triggers": {"$exists": True}}) <= 1

    details_before = len(env.graph.detail_calls())
    second = await backfill(env)
    assert second["state"] == "done" and second["messages"]["stored"] == 0
    assert second["messages"]["duplicate"] == 50 * 20
    assert len(env.graph.detail_calls()) == details_before, "known mids are not asked for again"
    assert await stored_mids(env) == mids

    # A webhook redelivering an imported mid is a duplicate.
    again = await env.post(messaging_body(text_item("aWdf_hist_4_28", "question 28 in 4", sender=customer_id(4))))
    assert again["duplicate"] is True and again["layer"] == "mid"


async def test_an_interrupted_import_resumes_where_its_checkpoint_is(env: EventsEnv) -> None:
    fill_history(env.graph, 12, 5)
    done_before_stop: list[int] = []

    def stop_after_five() -> bool:
        done_before_stop.append(1)
        return len(done_before_stop) >= 5

    first = await backfill(env, should_stop=stop_after_five)
    assert first["state"] == "queued" and first["conversations"]["done"] == 5
    run = await env.core.store.history_runs.get(f"backfill:{env.channel['id']}")
    assert run["state"] == "queued" and run["next_index"] == 5 and run["owner"] is None

    # Another process takes it (here: the same code under another owner) and finishes it.
    claimed = await env.core.store.history_runs.claim("other-process", 60)
    assert claimed is not None and claimed["_id"] == run["_id"]
    done = await env.core.history.importer.execute(claimed)
    assert done["state"] == "done" and done["conversations"]["done"] == 12
    assert set(await stored_mids(env)) == detailed_mids(12, 5)
    listed = Counter(node for node, _ in env.graph.history_calls if node.startswith("t_"))
    assert set(listed.values()) == {1}, "no conversation was read twice"


async def test_a_run_whose_process_died_is_taken_over_after_its_lease(env: EventsEnv) -> None:
    fill_history(env.graph, 3, 4)
    channel = await env.core.accounts.channel(env.channel["id"])
    run = await env.core.accounts.queue_backfill(channel, None)
    dead = await env.core.store.history_runs.claim("dead-process", 0.05, run["_id"])
    assert dead is not None
    assert await env.core.store.history_runs.claim("other", 60, run["_id"]) is None  # its lease holds

    async def taken_over() -> Any:
        return await env.core.store.history_runs.claim("other", 60, run["_id"])

    claimed = await wait_for(taken_over)
    assert (await env.core.history.importer.execute(claimed))["state"] == "done"
    assert len(await stored_mids(env)) == 12


async def test_since_limits_the_import_to_recent_conversations_and_messages(env: EventsEnv) -> None:
    fill_history(env.graph, 5, 10, start=1_780_000_000)
    # Conversation c's messages are at start + c*1000 + m: since the middle of conversation 3.
    since = dt.datetime.fromtimestamp(1_780_003_005, tz=dt.UTC)
    result = await backfill(env, since=since)
    assert result["state"] == "done" and result["conversations"]["total"] == 2  # 3 and 4 are newer
    assert set(await stored_mids(env)) == {f"aWdf_hist_3_{m}" for m in range(5, 10)} | {
        f"aWdf_hist_4_{m}" for m in range(10)
    }


async def test_calls_stay_within_the_accounts_rate(env: EventsEnv) -> None:
    fill_history(env.graph, 4, 3)
    env.core.history.importer.calls_per_sec = 20.0
    started = time.monotonic()
    result = await backfill(env)
    elapsed = time.monotonic() - started
    calls = result["calls"]
    assert calls == 1 + 4 * (1 + 3)
    # A bucket of one second's burst: after it, 20 calls per second at most.
    assert elapsed >= (calls - 20) / 20.0 * 0.95, (calls, elapsed)


async def test_rate_limits_and_outages_are_waited_out_and_a_refused_token_stops_the_run(env: EventsEnv) -> None:
    fill_history(env.graph, 2, 3)
    env.core.history.importer.retry_base_secs = 0.01
    env.graph.fail_next(GraphAnswer(400, meta_error(4, "Application request limit reached")))
    env.graph.fail_next(GraphAnswer(400, meta_error(100, "Unsupported get request", 33)), times=2)
    env.graph.fail_next(GraphAnswer(503, {}))
    result = await backfill(env)
    assert result["state"] == "done" and len(await stored_mids(env)) == 6

    fill_history(env.graph, 1, 2, start=1_790_000_000)  # a newer conversation appears
    env.graph.revoke()
    stopped = await backfill(env)
    assert stopped["state"] == "failed" and stopped["error"] == "needs_reauth"
    channel = await env.core.store.channels.get(env.channel_oid)
    assert channel["needs_reauth"] is True
    # Reconnecting with a token Meta accepts queues the stopped import again.
    env.graph.valid_tokens.add("IGQVJ-a-new-token-after-reauth")
    response = await env.client.post(
        "/api/v1/channels",
        {
            "page_id": ACCOUNT_ID,
            "username": "shop",
            "owner": {"id": 1, "email": "owner@example.com"},
            "access_token": "IGQVJ-a-new-token-after-reauth",
        },
        token=ADMIN_TOKEN,
    )
    assert response.code == 200
    run = await env.core.store.history_runs.get(f"backfill:{env.channel['id']}")
    assert run["state"] == "queued"


@pytest.mark.parametrize("env", [{"history_concurrency": 1}], indirect=True)
async def test_the_admin_api_runs_it_in_the_background_and_the_sockets_hear_its_progress(env: EventsEnv) -> None:
    fill_history(env.graph, 6, 4)
    response = await env.client.post(f"/api/v1/channels/{env.channel['id']}/history", {}, token=ADMIN_TOKEN)
    assert response.code == 202, response.body
    started = body_of(response)["history_import"]
    assert started["mode"] == "backfill" and started["state"] in ("queued", "running")

    async def finished() -> Any:
        answer = body_of(await env.client.get(f"/api/v1/channels/{env.channel['id']}/history", token=ADMIN_TOKEN))
        return answer if answer["runs"] and answer["runs"][0]["state"] == "done" else None

    runs = (await wait_for(finished))["runs"]
    assert runs[0]["messages"]["stored"] == 24 and runs[0]["conversations"]["total"] == 6
    progress = [e for e in env.events("history_import")]
    assert progress and progress[-1].data["history_import"]["state"] == "done"
    assert progress[-1].channel_id == env.channel["id"] and progress[-1].conversation_id is None

    # Bad input: 422 (since), 404 (channel), 403 (an inbox token), nothing queued.
    bad = await env.client.post(
        f"/api/v1/channels/{env.channel['id']}/history", {"since": "yesterday"}, token=ADMIN_TOKEN
    )
    assert bad.code == 422 and body_of(bad)["error"] == "validation_error"
    missing = await env.client.post(f"/api/v1/channels/{ObjectId()}/history", {}, token=ADMIN_TOKEN)
    assert missing.code == 404
    forbidden = await env.client.post(f"/api/v1/channels/{env.channel['id']}/history", {}, token=env.token)
    assert forbidden.code == 403
    assert await env.core.store.db.history_runs.count_documents({}) == 1


async def test_the_cli_dry_run_prints_what_it_would_store_and_stores_nothing(env: EventsEnv) -> None:
    fill_history(env.graph, 3, 25)
    await env.post(messaging_body(text_item("aWdf_hist_0_24", "question 24 in 0", sender=customer_id(0))))
    code, lines, err = await _cli_lines(env, "backfill", "--channel", env.channel["id"], "--dry-run")
    assert code == 0, err
    rows, total = lines[:-1], lines[-1]["total"]
    assert len(rows) == 3 and {r["conversation"] for r in rows} == {"t_0000", "t_0001", "t_0002"}
    assert total["would_store"] == 3 * 20 - 1 and total["stored_already"] == 1 and total["not_detailed"] == 3 * 5
    assert len(await stored_mids(env)) == 1

    code, result, err = await cli(env.core.settings, "backfill", "--channel", env.channel["id"])
    assert code == 0, err
    assert result["state"] == "done" and result["messages"]["stored"] == 59
    assert "conversations 3/3" in err  # progress on stderr


async def _cli_lines(env: EventsEnv, *args: str) -> tuple[int, list[Any], str]:
    """``python -m server ARGS``: (exit code, its stdout as JSON lines, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "server",
        *args,
        cwd=ROOT,
        env=server_env(env.core.settings),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    return proc.returncode or 0, [orjson.loads(line) for line in out.splitlines() if line.strip()], err.decode()


def test_a_conversations_api_message_becomes_the_webhook_item_it_would_have_been() -> None:
    details = {
        "id": "aWdf_x",
        "created_time": "2026-11-30T10:00:00+0000",
        "from": {"id": "17841400000000001", "username": "shop"},
        "to": {"data": [{"id": "6200000000000101", "username": "ana"}]},
        "message": "hello",
        "attachments": {"data": [{"image_data": {"url": "https://cdn.example/x.jpg"}}, {"file_url": "https://f/y"}]},
    }
    item = messaging_of(details, {"17841400000000001"})
    assert item["sender"] == {"id": "17841400000000001"} and item["recipient"] == {"id": "6200000000000101"}
    assert item["message"]["is_echo"] is True and item["message"]["text"] == "hello"
    assert [a["type"] for a in item["message"]["attachments"]] == ["image", "file"]
    assert item["timestamp"] == int(dt.datetime(2026, 11, 30, 10, tzinfo=dt.UTC).timestamp() * 1000)
    inbound = messaging_of({**details, "from": {"id": "6200000000000101"}}, {"17841400000000001"})
    assert "is_echo" not in inbound["message"]
    assert runs_model.backfill_id(ObjectId("0" * 24)) == "backfill:" + "0" * 24
