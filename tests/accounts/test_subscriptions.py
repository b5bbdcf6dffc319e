"""Connecting a channel subscribes its account to the webhook fields igsync handles — the fields
and the host of its kind (Instagram Login: graph.instagram.com, ``me``; Facebook Login: the Page
on graph.facebook.com, with ``message_echoes``) — and reads it back; ``doctor`` tells "not
subscribed" from "subscribed, but Meta delivers nothing"."""

from __future__ import annotations

import datetime as dt
from typing import Any

from bson import ObjectId

from models.timeutil import utcnow
from server.app.doctor import Doctor
from server.graph.client import WEBHOOK_FIELDS
from tests.fakes.graph import ACCESS_TOKEN, FakeGraphApi
from tests.support.events import EventsEnv, events_env
from tests.support.helpers import ADMIN_TOKEN, CUSTOMER_A, body_of, messaging_body, text_item, wait_for

PAGE_ID = "104000000000777"
IG_ACCOUNT = "17841400000000777"


async def test_connecting_subscribes_the_account_and_reads_it_back(env: EventsEnv) -> None:
    async def subscribed() -> Any:
        channel = await env.core.store.channels.get(env.channel_oid)
        return (channel.get("subscription") or {}).get("state") == "subscribed"

    await wait_for(subscribed)
    assert env.graph.subscriptions["me"] == sorted(WEBHOOK_FIELDS["instagram_login"])
    assert "message_echoes" not in env.graph.subscriptions["me"], "a Messenger-only field"
    answer = body_of(await env.client.get(f"/api/v1/channels/{env.channel['id']}/subscription", token=ADMIN_TOKEN))
    assert answer["subscription"]["state"] == "subscribed" and answer["subscription"]["missing"] == []

    # Someone removed a field at Meta: the read-back says which; POST subscribes again.
    env.graph.subscriptions["me"].remove("message_reactions")
    answer = body_of(await env.client.get(f"/api/v1/channels/{env.channel['id']}/subscription", token=ADMIN_TOKEN))
    assert answer["subscription"] == {**answer["subscription"], "state": "incomplete", "missing": ["message_reactions"]}
    answer = body_of(await env.client.post(f"/api/v1/channels/{env.channel['id']}/subscription", {}, token=ADMIN_TOKEN))
    assert answer["subscription"]["state"] == "subscribed"
    shown = body_of(await env.client.get("/api/v1/channels", token=env.token))["channels"][0]
    assert shown["subscription_state"] == "subscribed" and shown["login"] == "instagram_login"

    missing = await env.client.get(f"/api/v1/channels/{ObjectId()}/subscription", token=ADMIN_TOKEN)
    assert missing.code == 404
    assert (await env.client.get(f"/api/v1/channels/{env.channel['id']}/subscription", token=env.token)).code == 403


async def test_doctor_tells_not_subscribed_from_subscribed_but_silent(env: EventsEnv) -> None:
    doctor = Doctor(env.core.settings, server_url=None)
    env.graph.subscriptions.pop("me", None)
    result = await doctor.check_subscriptions(env.core)
    assert result.status == "fail" and "not subscribed" in result.summary
    assert f"igsync channel subscribe {env.channel['id']}" in result.summary

    await env.core.accounts.subscribe(await env.core.store.channels.get(env.channel_oid))
    silent_since = utcnow() - dt.timedelta(hours=30)
    await env.core.store.db.channels.update_one({"_id": env.channel_oid}, {"$set": {"last_webhook_at": silent_since}})
    result = await doctor.check_subscriptions(env.core)
    assert result.status == "warn" and "Meta lists it subscribed, yet no webhook" in result.summary

    await env.post(messaging_body(text_item("sub-1", "hi", sender=CUSTOMER_A)))
    result = await doctor.check_subscriptions(env.core)
    assert result.status == "pass", result


async def test_a_facebook_login_channel_uses_its_page_on_the_facebook_host(stores: Any, tmp_path: Any) -> None:
    facebook = FakeGraphApi().start()
    try:
        async with events_env(stores, tmp_path, facebook_graph_api_url=facebook.url) as env:
            response = await env.client.post(
                "/api/v1/channels",
                {
                    "page_id": PAGE_ID,
                    "instagram_user_id": IG_ACCOUNT,
                    "username": "pageshop",
                    "owner": {"id": 1, "email": "owner@example.com"},
                    "access_token": ACCESS_TOKEN,
                    "login": "facebook_login",
                },
                token=ADMIN_TOKEN,
            )
            assert response.code == 201, response.body
            channel = body_of(response)["channel"]
            assert channel["login"] == "facebook_login"

            async def subscribed() -> Any:
                doc = await env.core.store.channels.get(ObjectId(channel["id"]))
                return (doc.get("subscription") or {}).get("state") == "subscribed"

            await wait_for(subscribed)
            assert facebook.subscriptions[PAGE_ID] == sorted(WEBHOOK_FIELDS["facebook_login"])
            assert "message_echoes" in facebook.subscriptions[PAGE_ID]
            assert PAGE_ID not in env.graph.subscriptions, "nothing went to the Instagram host"

            # Webhooks name the Instagram account (entry.id); the Send API goes to the Page.
            conversation = await _customer_writes(env, IG_ACCOUNT)
            sent = await env.client.post(
                f"/api/v1/conversations/{conversation}/messages", {"content": "hello"}, token=env.token
            )
            assert sent.code == 202, sent.body
            await wait_for(lambda: facebook.sends)
            assert facebook.sends[0]["account_id"] == PAGE_ID and env.graph.sends == []
            # The history import lists the Page's conversations on the Facebook host.
            facebook.add_conversation("t_fb", CUSTOMER_A, IG_ACCOUNT, [("aWdf_fb_1", "from the past", 1_780_000_000)])
            doc = await env.core.store.channels.get(ObjectId(channel["id"]))
            run = await env.core.accounts.queue_backfill(doc, None)
            claimed = await env.core.store.history_runs.claim("t", 60, run["_id"])
            assert (await env.core.history.importer.execute(claimed))["messages"]["stored"] == 1
            assert any(c["what"] == "conversations" and c["node"] == PAGE_ID for c in facebook.account_calls)
    finally:
        await facebook.stop()


async def _customer_writes(env: EventsEnv, account: str) -> str:
    body = messaging_body(text_item("fb-in-1", "hi page", sender=CUSTOMER_A, recipient=account), account_id=account)
    answer = await env.post(body)
    return answer["data"]["conversation"]["id"]
