"""Every message kind Instagram sends is stored with a message_type and what the inbox
needs to render it (reply_to, attachments with type/url, referral, postback…) — none is
dropped — and its media is kept (a fake CDN serves each file)."""

from __future__ import annotations

from typing import Any

from bson import ObjectId

from tests.fakes.cdn import JPEG, MP4, PDF
from tests.support.events import EventsEnv, fixture_mid, fixture_with
from tests.support.helpers import CUSTOMER_A, CUSTOMER_B, body_of, wait_for


async def stored(env: EventsEnv, name: str, body: bytes | None = None) -> dict[str, Any]:
    answer = await (env.post(body) if body is not None else env.fixture(name))
    assert answer["status"] == "success" and "duplicate" not in answer, answer
    message_id = answer["data"]["message"]["id"]
    return await env.ws_message(message_id)


async def completed(env: EventsEnv, message: dict[str, Any]) -> dict[str, Any]:
    async def done() -> Any:
        shown = await env.ws_message(message["id"])
        return shown if shown["processing_status"] != "pending" else None

    return await wait_for(done, timeout=10)


async def test_media_kinds_are_stored_and_their_files_kept(env: EventsEnv) -> None:
    cases = [
        ("customer_image", "image", JPEG, "image/jpeg"),
        ("customer_audio", "audio", MP4, "audio/mp4"),
        ("customer_video", "video", MP4, "video/mp4"),
        ("customer_file", "file", PDF, "application/pdf"),
        ("customer_story_mention", "story_mention", JPEG, "image/jpeg"),
        ("customer_share_reel", "ig_reel", MP4, "video/mp4"),
        ("owner_echo_image", "image", JPEG, "image/jpeg"),  # the business sent a photo from the app
    ]
    for name, message_type, data, content_type in cases:
        url = env.cdn.add(name, body=data, content_type=content_type)
        message = await stored(env, name, fixture_with(name, urls=[url]))
        assert message["message_type"] == message_type
        assert message["media_url"] == url
        assert message["attachments"][0]["url"] == url
        [chat] = [e for e in env.events("chat_message") if e.data["message"]["id"] == message["id"]]
        assert chat.data["message"]["processing_status"] == "pending"  # as stored, before the download
        done = await completed(env, message)
        assert done["processing_status"] == "completed", (name, done)
        assert done["media_url"] == url  # Instagram's link stays
        assert done["media_file"].startswith("/media/")
        assert done["attachments"][0]["media_file"] == done["media_file"]
        response = await env.client.get(done["media_file"], token=env.token)
        assert response.code == 200 and response.body == data
        assert response.headers["Content-Type"] == content_type
    assert body_of(await env.client.get("/api/v1/channels", token=env.token))["channels"]


async def test_shared_post_keeps_both_attachments_and_downloads_once(env: EventsEnv) -> None:
    url = env.cdn.add("post", body=JPEG, content_type="image/jpeg")
    message = await stored(env, "customer_share_post", fixture_with("customer_share_post", urls=[url, url]))
    assert message["message_type"] == "ig_post"
    assert [a["type"] for a in message["attachments"]] == ["share", "ig_post"]
    assert message["attachments"][1]["ig_post_media_id"] == "18060000000000401"
    assert message["attachments"][1]["title"].startswith("New autumn collection")
    done = await completed(env, message)
    assert done["processing_status"] == "completed"
    assert done["attachments"][0]["media_file"] == done["attachments"][1]["media_file"] == done["media_file"]
    assert env.cdn.count("post") == 1


async def test_story_reply_keeps_the_story(env: EventsEnv) -> None:
    url = env.cdn.add("story", body=JPEG, content_type="image/jpeg")
    message = await stored(env, "customer_story_reply", fixture_with("customer_story_reply", story_url=url))
    assert message["message_type"] == "story_reply"
    assert message["content"] == "Is this jacket still available in M?"
    assert message["reply_to"]["story"]["id"] == "18090000000000701"
    assert message["reply_to"]["story"]["url"] == url
    done = await completed(env, message)
    assert done["processing_status"] == "completed"
    story_file = done["reply_to"]["story"]["media_file"]
    assert story_file == done["media_file"]
    assert (await env.client.get(story_file, token=env.token)).body == JPEG


async def test_text_kinds_carry_what_the_inbox_renders(env: EventsEnv) -> None:
    reply = await stored(env, "customer_reply_to_message")
    assert reply["message_type"] == "text" and reply["reply_to"]["mid"] == fixture_mid("owner_echo_text")

    postback = await stored(env, "postback")
    assert postback["message_type"] == "postback"
    assert postback["content"] == "Track my order"
    assert postback["postback"] == {"title": "Track my order", "payload": "ICEBREAKER_TRACK_ORDER"}

    quick = await stored(env, "quick_reply")
    assert quick["message_type"] == "quick_reply"
    assert quick["content"] == "Size M" and quick["quick_reply"] == {"payload": "SIZE_M"}

    referral = await stored(env, "referral")
    assert referral["message_type"] == "referral"
    assert referral["referral"]["source"] == "ADS" and referral["referral"]["ad_id"] == "120200000000000901"
    assert referral["referral"]["ref"] == "autumn_sale_ctd"
    assert referral["referral"]["ads_context_data"]["ad_title"] == "Autumn sale - 20% off jackets"
    assert referral["processing_status"] == "completed"

    from_ad = await stored(env, "customer_text_from_ad")
    assert from_ad["content"] == "Hi, I saw your ad. Is the sale still on?"
    assert from_ad["referral"]["ad_id"] == "120200000000000901"

    unsupported = await stored(env, "unsupported")
    assert unsupported["message_type"] == "unsupported" and unsupported["content"] == ""

    standby = await stored(env, "standby")
    assert standby["message_type"] == "text" and standby["content"] == "Hello? Anyone there?"

    # Every one of them is in its conversation, in order, none dropped.
    customers = {m["customer"] for m in (reply, postback, quick, referral, from_ad, unsupported, standby)}
    assert len(customers) == 2
    conversations = body_of(await env.client.get("/api/v1/conversations", token=env.token))["conversations"]
    assert {c["customer"]["instagram_id"] for c in conversations} == {CUSTOMER_A, CUSTOMER_B}


async def test_redelivered_media_message_queues_nothing_new(env: EventsEnv) -> None:
    url = env.cdn.add("img", body=JPEG, content_type="image/jpeg")
    body = fixture_with("customer_image", urls=[url])
    message = await stored(env, "customer_image", body)
    await completed(env, message)
    again = await env.post(body)
    assert again["duplicate"] is True
    jobs = await env.core.store.media_jobs.for_message(ObjectId(message["id"]))
    assert [j["state"] for j in jobs] == ["completed"]
    assert env.cdn.count("img") == 1
