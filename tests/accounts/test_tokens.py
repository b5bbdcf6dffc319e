"""Instagram-Login tokens refreshed before they expire — on a schedule kept in MongoDB (so a
restart keeps it), once across processes — and what a refused token stops and a reconnect
starts again (sends, media copies; profile look-ups: tests/graph/test_profiles.py)."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path
from typing import Any

from bson import ObjectId

from models.timeutil import utcnow
from server.accounts.tokens import refresh_due
from server.app.embedded import free_port
from tests.fakes.cdn import JPEG
from tests.fakes.graph import ACCESS_TOKEN, GraphAnswer
from tests.support.events import EventsEnv, fixture_with
from tests.support.helpers import (
    ADMIN_TOKEN,
    CUSTOMER_A,
    Client,
    ServerProcessHandle,
    body_of,
    messaging_body,
    server_env,
    text_item,
    wait_for,
)

DAY = dt.timedelta(days=1)


async def age_token(env: EventsEnv, *, set_days_ago: float, expires_in_days: float | None) -> None:
    """Make the channel's token as old (and as close to expiry) as a test needs."""
    now = utcnow()
    fields: dict[str, Any] = {"token_set_at": now - set_days_ago * DAY}
    fields["token_expires_at"] = None if expires_in_days is None else now + expires_in_days * DAY
    await env.core.store.db.channels.update_one({"_id": env.channel_oid}, {"$set": fields})


async def metric_value(env: EventsEnv, line: str) -> float | None:
    body = (await env.client.get("/metrics")).body.decode()
    for row in body.splitlines():
        if row.startswith(line + " "):
            return float(row.rsplit(" ", 1)[1])
    return None


async def test_a_token_near_expiry_is_refreshed_and_the_new_one_is_used(env: EventsEnv) -> None:
    await age_token(env, set_days_ago=50, expires_in_days=3)
    assert await metric_value(env, 'igsync_token_refreshes_total{outcome="refreshed"}') == 0.0
    await env.core.tokens.check()
    [refreshed_from] = env.graph.refreshes
    assert refreshed_from == ACCESS_TOKEN
    channel = await env.core.store.channels.get(env.channel_oid)
    assert channel["access_token"] != ACCESS_TOKEN and channel["access_token"] in env.graph.valid_tokens
    assert channel["token_expires_at"] - utcnow() > 59 * DAY
    assert await metric_value(env, 'igsync_token_refreshes_total{outcome="refreshed"}') == 1.0
    expiry = await metric_value(env, "igsync_channel_token_expiry_seconds")
    assert expiry is not None and expiry > 59 * 86400

    # Not due again: a second check asks Meta nothing.
    await env.core.tokens.check()
    assert len(env.graph.refreshes) == 1
    # The next Graph call uses the new token.
    env.graph.profile(CUSTOMER_A, name="Ana")
    await env.post(messaging_body(text_item("tok-1", "hi", sender=CUSTOMER_A)))
    await env.core.profiles.idle()
    assert env.graph.requests[-1]["access_token"] == channel["access_token"]


def test_what_is_due() -> None:
    now = utcnow()
    base = {"access_token": "t", "is_connect": True, "token_set_at": now - 2 * DAY}
    before = 10 * DAY
    assert refresh_due({**base, "token_expires_at": now + 5 * DAY}, now, before)
    assert not refresh_due({**base, "token_expires_at": now + 30 * DAY}, now, before)
    assert refresh_due({**base, "token_expires_at": None}, now, before), "unknown expiry: learn it by refreshing"
    assert not refresh_due({**base, "token_set_at": now - dt.timedelta(hours=20)}, now, before), "Meta: a day old"
    assert not refresh_due({**base, "token_expires_at": now - DAY}, now, before), "expired: only a reconnect"
    assert not refresh_due({**base, "login": "facebook_login"}, now, before), "Page tokens are not refreshed so"
    assert not refresh_due({**base, "needs_reauth": True}, now, before)


async def test_a_refused_refresh_marks_the_channel_and_the_inbox_hears_it(env: EventsEnv) -> None:
    await age_token(env, set_days_ago=55, expires_in_days=2)
    env.graph.revoke()
    await env.core.tokens.check()
    channel = await env.core.store.channels.get(env.channel_oid)
    assert channel["needs_reauth"] is True
    assert await metric_value(env, 'igsync_token_refreshes_total{outcome="rejected"}') == 1.0
    assert await metric_value(env, "igsync_channels_needing_reauth") == 1.0
    assert [e.data["channel"].get("needs_reauth") for e in env.events("channel_updated")].count(True) == 1
    channels = body_of(await env.client.get("/api/v1/channels", token=env.token))["channels"]
    assert channels[0]["needs_reauth"] is True


async def test_a_refusal_of_the_old_token_after_a_reconnect_leaves_the_new_one_alone(env: EventsEnv) -> None:
    # A profile look-up (or a send, a history page) called with the old token; the admin
    # reconnected while it was in flight; Meta's "refused" arrives after the reconnect.
    with_old_token = await env.core.store.channels.get(env.channel_oid)
    env.graph.valid_tokens.add("IGQVJ-reconnected-token")
    await reconnect(env, "IGQVJ-reconnected-token")
    assert await env.core.accounts.health.token_rejected(with_old_token, by="profiles") is False
    channel = await env.core.store.channels.get(env.channel_oid)
    assert channel["needs_reauth"] is False and channel["access_token"] == "IGQVJ-reconnected-token"
    assert not [e for e in env.events("channel_updated") if e.data["channel"].get("needs_reauth")]
    # The current token refused: marked, announced once.
    assert await env.core.accounts.health.token_rejected(channel, by="profiles") is True
    assert (await env.core.store.channels.get(env.channel_oid))["needs_reauth"] is True
    assert [e.data["channel"].get("needs_reauth") for e in env.events("channel_updated")].count(True) == 1


async def test_the_schedule_survives_a_restart_and_two_processes_refresh_once(env: EventsEnv, tmp_path: Path) -> None:
    """Due in MongoDB, not in memory: two fresh ``igsync serve`` processes on the same stores
    (a restart, twice over) find it at start-up, and one of them refreshes it."""
    await age_token(env, set_days_ago=55, expires_in_days=1)
    # Meta's answer is held until both processes have checked: both see the token due at once.
    gate = env.graph.refresh_gate = asyncio.Event()
    handles = []
    try:
        for n in range(2):
            process_settings = env.core.settings.replace(
                # Meta's held answer must outlast the wait below, not time out.
                **dict(port=free_port(), token_check_secs=0.2, history_concurrency=0, graph_api_timeout_secs=30.0),
                send_lease_secs=60.0,
            )
            handles.append(ServerProcessHandle(server_env(process_settings), tmp_path / f"p{n}.log").start(timeout=60))

        async def checked(handle: ServerProcessHandle) -> bool:
            client = Client(handle.base_url)
            try:
                body = (await client.get("/metrics")).body.decode()
            finally:
                client.close()
            # A check ran in that process: it measured the (one-day) expiry.
            return "igsync_channel_token_expiry_seconds 8" in body or "igsync_channel_token_expiry_seconds 7" in body

        def refresh_calls() -> list[dict[str, Any]]:
            return [c for c in env.graph.account_calls if c["what"] == "refresh"]

        await wait_for(refresh_calls, timeout=30)

        async def the_other_checked() -> bool:
            # The process holding the claim waits on Meta; the other one finished a check (its
            # gauge shows the one-day expiry) and did not call.
            return any([await checked(h) for h in handles])

        await wait_for(the_other_checked, timeout=30)
        assert len(refresh_calls()) == 1, "the second process saw the claim and did not call"
        gate.set()

        async def refreshed() -> bool:
            channel = await env.core.store.channels.get(env.channel_oid)
            return channel["access_token"] != ACCESS_TOKEN

        await wait_for(refreshed, timeout=30)
        assert len(env.graph.refreshes) == 1
    finally:
        gate.set()
        for handle in handles:
            handle.kill()


async def test_a_send_refused_for_the_token_is_sent_after_the_reconnect(env: EventsEnv) -> None:
    await env.post(messaging_body(text_item("tok-in", "need help", sender=CUSTOMER_A)))
    conversation_id = (await env.core.store.db.conversations.find_one({}))["_id"]
    await env.core.profiles.idle()  # the new customer's look-up is done: the send meets the refusal
    env.graph.revoke()
    response = await env.client.post(
        f"/api/v1/conversations/{conversation_id}/messages", {"content": "on it"}, token=env.token
    )
    assert response.code == 202
    message_id = body_of(response)["message"]["id"]

    async def failed() -> Any:
        doc = await env.core.store.messages.get(ObjectId(message_id))
        return doc if doc["delivery_status"] == "failed" else None

    doc = await wait_for(failed)
    assert doc["delivery_error"]["code"] == 190 and doc["send"]["awaiting_reauth"] == env.channel_oid
    env.graph.valid_tokens.add("IGQVJ-reconnected-token")
    await reconnect(env, "IGQVJ-reconnected-token")

    async def sent() -> Any:
        doc = await env.core.store.messages.get(ObjectId(message_id))
        return doc if doc["delivery_status"] == "sent" else None

    doc = await wait_for(sent)
    assert "awaiting_reauth" not in doc["send"] and len(env.graph.sends) == 2
    assert env.graph.sends[-1]["access_token"] == "IGQVJ-reconnected-token"


async def test_a_media_copy_that_waited_on_the_token_runs_after_the_reconnect(env: EventsEnv) -> None:
    # The link expired, and the fresh one cannot be asked for: the token is refused.
    env.graph.revoke()
    expired = fixture_with("customer_image", urls=[env.cdn.url("gone")], mid="mid-wait-token")
    message_id = (await env.post(expired))["data"]["message"]["id"]

    async def failed() -> Any:
        job = await env.core.store.db.media_jobs.find_one({"message_id": ObjectId(message_id)})
        return job if job and job["state"] == "failed" else None

    await wait_for(failed)
    assert (await env.core.store.channels.get(env.channel_oid))["needs_reauth"] is True
    env.cdn.add("fresh", body=JPEG, content_type="image/jpeg")
    env.graph.valid_tokens.add("IGQVJ-reconnected-token")
    env.graph.sequence("mid-wait-token", _attachments("mid-wait-token", env.cdn.url("fresh")))
    await reconnect(env, "IGQVJ-reconnected-token")

    async def copied() -> Any:
        doc = await env.core.store.messages.get(ObjectId(message_id))
        return doc if doc["processing_status"] == "completed" else None

    await wait_for(copied)


def _attachments(mid: str, url: str) -> GraphAnswer:
    return GraphAnswer(200, {"id": mid, "attachments": {"data": [{"image_data": {"url": url}}]}})


async def reconnect(env: EventsEnv, token: str) -> None:
    response = await env.client.post(
        "/api/v1/channels",
        {"page_id": env.channel["page_id"], "username": "shop", "owner": {"id": 1, "email": "owner@example.com"},
         "access_token": token},
        token=ADMIN_TOKEN,
    )  # fmt: skip
    assert response.code == 200, response.body
