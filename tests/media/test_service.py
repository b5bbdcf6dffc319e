"""Media that lasts: queued durably, downloaded with a cap, a type check
and a timeout from a fake CDN (a real local HTTP server), retried with backoff, stored in
GridFS, served by ``GET /media/{id}`` to the owner only, removed on unsend."""

from __future__ import annotations

import copy
import datetime as dt
from pathlib import Path
from typing import Any

import orjson
import pytest
from bson import ObjectId

from models.timeutil import utcnow
from server.media.download import accept_content_type
from server.media.links import pick_url
from server.media.transcribe import AudioClip
from tests.fakes.cdn import JPEG, MP4, PNG
from tests.fakes.graph import ACCESS_TOKEN, GraphAnswer
from tests.support.events import EventsEnv, events_env, fixture_with
from tests.support.fixtures_triggers import cli
from tests.support.helpers import ACCOUNT_ID, ADMIN_TOKEN, CUSTOMER_A, body_of, fixture_json, messaging_body, wait_for
from tests.support.server import start_server, stop_server

BIG = b"\xff\xd8\xff" + b"x" * (300 * 1024)  # above the tests' 256 KiB cap


@pytest.fixture
async def env(stores: Any, tmp_path: Path, request: pytest.FixtureRequest) -> Any:
    overrides = getattr(request, "param", {})
    async with events_env(stores, tmp_path, **overrides) as e:
        yield e


async def image_message(env: EventsEnv, name: str, **spec: Any) -> str:
    url = env.cdn.add(name, **spec)
    answer = await env.post(fixture_with("customer_image", urls=[url], mid=f"mid-{name}"))
    return answer["data"]["message"]["id"]


async def settled(env: EventsEnv, message_id: str, timeout: float = 10) -> dict[str, Any]:
    async def done() -> Any:
        doc = await env.core.store.message_updates.get(ObjectId(message_id))
        return doc if doc["processing_status"] != "pending" else None

    return await wait_for(done, timeout=timeout)


async def job_of(env: EventsEnv, message_id: str) -> dict[str, Any]:
    """The message's job once its worker closed it (just after the message shows the outcome)."""

    async def closed() -> Any:
        [job] = await env.core.store.media_jobs.for_message(ObjectId(message_id))
        return job if job["state"] not in ("pending", "running") else None

    return await wait_for(closed)


# -- downloads ---------------------------------------------------------------------------------


async def test_image_is_stored_served_and_announced(env: EventsEnv) -> None:
    message_id = await image_message(env, "photo", body=JPEG, content_type="image/jpeg")
    doc = await settled(env, message_id)
    assert doc["processing_status"] == "completed"
    assert isinstance(doc["media_file"], ObjectId)
    assert doc["attachments"][0]["processing_status"] == "completed"
    job = await job_of(env, message_id)
    assert job["state"] == "completed" and job["attempts"] == 1 and job["file_id"] == doc["media_file"]
    [update] = [e for e in env.events("message_updated") if e.data["message"]["id"] == message_id]
    assert update.data["changes"] == ["attachments", "media_file", "processing_status"]
    assert update.data["message"]["processing_status"] == "completed"
    assert update.data["message"]["media_file"] == f"/media/{doc['media_file']}"

    response = await env.client.get(f"/media/{doc['media_file']}", token=env.token)
    assert response.code == 200 and response.body == JPEG
    assert response.headers["Content-Type"] == "image/jpeg"
    assert response.headers["Cache-Control"] == "private, max-age=31536000, immutable"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert "sandbox" in response.headers["Content-Security-Policy"]
    assert response.headers["Content-Disposition"].startswith("inline")
    etag = response.headers["ETag"]
    again = await env.client.get(f"/media/{doc['media_file']}", token=env.token, headers={"If-None-Match": etag})
    assert again.code == 304 and again.body == b""


async def test_media_is_only_for_the_owner(env: EventsEnv, stores: Any, tmp_path: Path) -> None:
    message_id = await image_message(env, "private", body=JPEG, content_type="image/jpeg")
    path = f"/media/{(await settled(env, message_id))['media_file']}"
    response = await env.client.get(path)
    assert response.code == 401 and body_of(response)["error"] == "unauthorized"
    response = await env.client.get(path, token=ADMIN_TOKEN)
    assert response.code == 403 and body_of(response)["error"] == "forbidden"
    # Another owner's valid inbox token: 404, as if it did not exist.
    await env.client.post(
        "/api/v1/channels",
        {"page_id": "17841400000000999", "username": "other", "owner": {"id": 2, "email": "other@example.com"}},
        token=ADMIN_TOKEN,
    )
    other = body_of(await env.client.post("/api/v1/tokens", {"owner_email": "other@example.com"}, token=ADMIN_TOKEN))
    response = await env.client.get(path, token=other["token"])
    assert response.code == 404 and body_of(response)["error"] == "not_found"
    for missing in ("/media/not-an-id", f"/media/{ObjectId()}"):
        response = await env.client.get(missing, token=env.token)
        assert response.code == 404 and set(body_of(response)) == {"error", "message"}


async def test_byte_ranges_for_audio_and_video_seeking(env: EventsEnv) -> None:
    url = env.cdn.add("clip", body=MP4, content_type="video/mp4")
    answer = await env.post(fixture_with("customer_video", urls=[url]))
    doc = await settled(env, answer["data"]["message"]["id"])
    path = f"/media/{doc['media_file']}"
    part = await env.client.get(path, token=env.token, headers={"Range": "bytes=4-11"})
    assert part.code == 206 and part.body == MP4[4:12]
    assert part.headers["Content-Range"] == f"bytes 4-11/{len(MP4)}"
    tail = await env.client.get(path, token=env.token, headers={"Range": "bytes=-10"})
    assert tail.code == 206 and tail.body == MP4[-10:]
    bad = await env.client.get(path, token=env.token, headers={"Range": f"bytes={len(MP4) + 5}-"})
    assert bad.code == 416 and body_of(bad)["error"] == "range_not_satisfiable"
    bad = await env.client.get(path, token=env.token, headers={"Range": "bytes=1-2,5-6"})
    assert bad.code == 416
    head = await env.client.request("HEAD", path, token=env.token)
    assert head.code == 200 and head.headers["Content-Length"] == str(len(MP4)) and head.body == b""


async def test_too_large_file_fails_without_retrying(env: EventsEnv) -> None:
    sized = await image_message(env, "big", body=BIG, content_type="image/jpeg")
    chunked = await image_message(env, "big-chunked", body=BIG, content_type="image/jpeg", chunked=True)
    for message_id, name in ((sized, "big"), (chunked, "big-chunked")):
        doc = await settled(env, message_id)
        assert doc["processing_status"] == "failed"
        assert doc["attachments"][0]["error"] == "too_large"
        assert doc.get("media_file") is None
        job = await job_of(env, message_id)
        assert job["state"] == "failed" and job["attempts"] == 1 and job["file_id"] is None
        assert env.cdn.count(name) == 1
        assert doc["media_url"].endswith("oh=FAKE_SIGNATURE&oe=FAKE")  # Instagram's link is kept
    assert await env.core.store.db["media.files"].count_documents({}) == 0

    async def counted() -> bool:
        return b'igsync_media_jobs_total{outcome="failed"} 2.0' in (await env.client.get("/metrics")).body

    await wait_for(counted)  # counted once the job is closed, just after the message shows it


async def test_wrong_content_type_and_expired_link_fail_at_once(env: EventsEnv) -> None:
    html = await image_message(env, "login-page", body=b"<html>log in</html>", content_type="text/html")
    video_as_image = await image_message(env, "not-an-image", body=MP4, content_type="video/mp4")
    url = env.cdn.url("expired")  # never registered: the CDN answers 404
    # Meta says for good that there is no fresh link (a permission error; 100 would be retried).
    env.graph.error("mid-expired", 10, message="Application does not have permission for this action")
    expired = (await env.post(fixture_with("customer_image", urls=[url], mid="mid-expired")))["data"]["message"]["id"]
    for message_id, reason in ((html, "content_type"), (video_as_image, "content_type"), (expired, "expired_link_404")):
        doc = await settled(env, message_id)
        assert doc["processing_status"] == "failed" and doc["attachments"][0]["error"] == reason
        assert (await job_of(env, message_id))["attempts"] == 1
    [failed] = [e for e in env.events("message_updated") if e.data["message"]["id"] == expired]
    assert failed.data["message"]["processing_status"] == "failed"
    assert env.cdn.count("expired") == 1
    # Asked once for a fresh link; the Graph API refused it for good.
    assert len(env.graph.requests_for("mid-expired")) == 1


# -- expired links: a fresh one from the Graph API ------------------------------------------------


def attachments_answer(mid: str, *urls: str) -> GraphAnswer:
    """What ``GET /{message-id}?fields=attachments`` answers: newly signed links."""
    data = [{"id": f"att-{i}", "mime_type": "image/jpeg", "image_data": {"url": u}} for i, u in enumerate(urls)]
    return GraphAnswer(200, {"id": mid, "attachments": {"data": data}})


async def metric(env: EventsEnv, outcome: str) -> float:
    line = f'igsync_media_link_refreshes_total{{outcome="{outcome}"}} '.encode()
    body = (await env.client.get("/metrics")).body
    return float(body.split(line, 1)[1].split(b"\n", 1)[0])


async def test_an_expired_link_is_downloaded_from_a_fresh_graph_api_link(env: EventsEnv) -> None:
    fresh = env.cdn.add("fresh-copy", body=JPEG, content_type="image/jpeg")
    env.graph.sequence("mid-refresh", attachments_answer("mid-refresh", fresh))
    expired = env.cdn.url("signature-expired")  # never registered: the CDN answers 404
    answer = await env.post(fixture_with("customer_image", urls=[expired], mid="mid-refresh"))
    message_id = answer["data"]["message"]["id"]
    doc = await settled(env, message_id)
    assert doc["processing_status"] == "completed" and doc["attachments"][0]["processing_status"] == "completed"
    served = await env.client.get(f"/media/{doc['media_file']}", token=env.token)
    assert served.code == 200 and served.body == JPEG
    [asked] = env.graph.requests_for("mid-refresh")
    assert asked["fields"] == "attachments" and asked["access_token"] == ACCESS_TOKEN
    job = await job_of(env, message_id)
    assert job["url"] == fresh and job["expired_url"] == expired and job["attempts"] == 1
    assert env.cdn.count("signature-expired") == 1 and env.cdn.count("fresh-copy") == 1
    # The message keeps Instagram's original link as media_url; the copy is what lasts.
    assert doc["media_url"] == expired
    assert await metric(env, "refreshed") == 1


async def test_the_fresh_link_of_the_right_attachment_is_used(env: EventsEnv) -> None:
    first = env.cdn.add("first-photo", body=JPEG, content_type="image/jpeg")
    second_fresh = env.cdn.add("second-photo-fresh", body=PNG, content_type="image/png")
    payload = orjson.loads(fixture_with("customer_image", urls=[first], mid="mid-two-photos"))
    attachments = payload["entry"][0]["messaging"][0]["message"]["attachments"]
    attachments.append({"type": "image", "payload": {"url": env.cdn.url("second-photo-expired")}})
    env.graph.sequence("mid-two-photos", attachments_answer("mid-two-photos", first, second_fresh))
    message_id = (await env.post(orjson.dumps(payload)))["data"]["message"]["id"]
    doc = await settled(env, message_id)
    assert [a["processing_status"] for a in doc["attachments"]] == ["completed", "completed"]
    second = await env.client.get(doc["attachments"][1]["media_file"], token=env.token)
    assert second.body == PNG
    assert env.cdn.count("first-photo") == 1  # the live link was never refreshed
    assert len(env.graph.requests_for("mid-two-photos")) == 1


async def test_a_fresh_link_that_fails_too_is_not_refreshed_again(env: EventsEnv) -> None:
    env.graph.sequence("mid-gone-twice", attachments_answer("mid-gone-twice", env.cdn.url("also-expired")))
    body = fixture_with("customer_image", urls=[env.cdn.url("first-expired")], mid="mid-gone-twice")
    message_id = (await env.post(body))["data"]["message"]["id"]
    doc = await settled(env, message_id)
    assert doc["processing_status"] == "failed" and doc["attachments"][0]["error"] == "expired_link_404"
    job = await job_of(env, message_id)
    assert job["state"] == "failed" and job["attempts"] == 1
    assert len(env.graph.requests_for("mid-gone-twice")) == 1 and env.cdn.count("also-expired") == 1


async def test_a_graph_api_outage_retries_the_job_which_asks_again(env: EventsEnv) -> None:
    fresh = env.cdn.add("after-outage", body=JPEG, content_type="image/jpeg")
    env.graph.sequence("mid-outage", GraphAnswer(503, {}), attachments_answer("mid-outage", fresh))
    body = fixture_with("customer_image", urls=[env.cdn.url("expired-in-outage")], mid="mid-outage")
    message_id = (await env.post(body))["data"]["message"]["id"]
    doc = await settled(env, message_id)
    assert doc["processing_status"] == "completed"
    job = await job_of(env, message_id)
    assert job["attempts"] == 2 and job["last_retry_error"] == "expired_link_404_refresh_unavailable"
    assert len(env.graph.requests_for("mid-outage")) == 2
    assert await metric(env, "transient") == 1 and await metric(env, "refreshed") == 1


async def test_a_rejected_token_marks_the_channel_and_stops_asking(env: EventsEnv) -> None:
    env.graph.error("mid-token-1", 190, message="Error validating access token")
    first = fixture_with("customer_image", urls=[env.cdn.url("expired-a")], mid="mid-token-1")
    doc = await settled(env, (await env.post(first))["data"]["message"]["id"])
    assert doc["processing_status"] == "failed" and doc["attachments"][0]["error"] == "expired_link_404"
    channel = await env.core.store.channels.get(env.channel_oid)
    assert channel["needs_reauth"] is True
    second = fixture_with("customer_image", urls=[env.cdn.url("expired-b")], mid="mid-token-2")
    doc = await settled(env, (await env.post(second))["data"]["message"]["id"])
    assert doc["attachments"][0]["error"] == "expired_link_404"
    assert env.graph.requests_for("mid-token-2") == []  # the dead token is not used again
    assert await metric(env, "reauth_required") == 2


async def test_a_story_reply_is_not_refreshed(env: EventsEnv) -> None:
    """The story a reply answers is not an attachment of the message: nothing to ask for."""
    body = fixture_with("customer_story_reply", story_url=env.cdn.url("story-expired"))
    mid = orjson.loads(body)["entry"][0]["messaging"][0]["message"]["mid"]
    doc = await settled(env, (await env.post(body))["data"]["message"]["id"])
    assert doc["processing_status"] == "failed" and doc["reply_to"]["story"]["error"] == "expired_link_404"
    assert env.graph.requests_for(mid) == []


def test_the_fresh_link_is_picked_by_attachment_position() -> None:
    assert pick_url(["a", "b"], "attachments.1") == "b"
    assert pick_url(["only"], "attachments.3") == "only"  # a single attachment is the one
    assert pick_url(["a", "b"], "attachments.2") is None
    assert pick_url(["a"], "reply_to.story") is None
    assert pick_url([], "attachments.0") is None


# -- operators: failed downloads listed and queued again ------------------------------------------


async def test_failed_downloads_are_listed_and_queued_again(env: EventsEnv) -> None:
    """After a CDN outage outlived the retries: ``igsync media list-failed`` shows what failed
    and why, ``igsync media retry`` queues it again (here: the expired ones only) and the
    running server's workers finish it."""
    env.graph.error("mid-back-later", 10, message="Application does not have permission for this action")
    outage = fixture_with("customer_image", urls=[env.cdn.url("back-later")], mid="mid-back-later")
    expired_id = (await env.post(outage))["data"]["message"]["id"]
    html_id = await image_message(env, "a-login-page", body=b"<html>log in</html>", content_type="text/html")
    for message_id in (expired_id, html_id):
        await job_of(env, message_id)
    settings = env.core.settings

    code, listed, _ = await cli(settings, "media", "list-failed")
    assert code == 0
    by_message = {job["message_id"]: job for job in listed["jobs"]}
    assert by_message[expired_id]["error"] == "expired_link_404" and by_message[html_id]["error"] == "content_type"
    code, listed, _ = await cli(settings, "media", "list-failed", "--reason", "expired_link")
    assert [job["message_id"] for job in listed["jobs"]] == [expired_id]

    code, result, _ = await cli(settings, "media", "retry")
    assert code == 2, "neither --all nor ids"
    done = by_message[html_id]["job_id"]
    code, result, _ = await cli(settings, "media", "retry", "000000000000000000000000", "junk")
    assert code == 1 and result == {"retried": 0, "not_found": ["000000000000000000000000", "junk"], "not_failed": []}

    env.cdn.add("back-later", body=JPEG, content_type="image/jpeg")  # the CDN serves it again
    code, result, _ = await cli(settings, "media", "retry", "--all", "--reason", "expired_link")
    assert code == 0 and result == {"retried": 1, "not_found": [], "not_failed": []}
    doc = await wait_for(lambda: completed(env, expired_id))
    assert doc["attachments"][0]["processing_status"] == "completed"
    served = await env.client.get(f"/media/{doc['media_file']}", token=env.token)
    assert served.body == JPEG
    job = await job_of(env, expired_id)
    assert job["state"] == "completed" and job["attempts"] == 1 and job["error"] is None
    # The other reason was not touched; a job that is not failed is refused by id.
    assert (await job_of(env, html_id))["state"] == "failed"
    code, result, _ = await cli(settings, "media", "retry", str(job["_id"]), done)
    assert (
        code == 1
        and result["retried"] == 1
        and result["not_failed"] == [{"job_id": str(job["_id"]), "state": "completed"}]
    )


async def completed(env: EventsEnv, message_id: str) -> dict[str, Any] | None:
    doc = await env.core.store.message_updates.get(ObjectId(message_id))
    return doc if doc["processing_status"] == "completed" else None


# -- the creative of the ad a conversation came from -------------------------------------------


def from_ad(name: str, mid: str, **creative: str | None) -> bytes:
    """A fixture that came from an ad, its creative's links (``photo_url``, ``video_url``)
    set as given (``None`` removes one)."""
    payload = copy.deepcopy(fixture_json(name))
    item = payload["entry"][0]["messaging"][0]
    if "message" in item:
        item["message"]["mid"] = mid
        referral = item["message"]["referral"]
    else:
        referral = item["referral"]
        referral["ref"] = mid  # a referral without a message takes its mid from the ref
    ad = referral["ads_context_data"]
    for field_name, url in creative.items():
        if url is None:
            ad.pop(field_name, None)
        else:
            ad[field_name] = url
    return orjson.dumps(payload)


async def creative_settled(env: EventsEnv, message_id: str, *kinds: str) -> dict[str, Any]:
    async def done() -> Any:
        doc = await env.core.store.message_updates.get(ObjectId(message_id))
        media = (doc.get("referral") or {}).get("media") or {}
        states = [(media.get(kind) or {}).get("processing_status") for kind in kinds]
        return doc if all(state in ("completed", "failed") for state in states) else None

    return await wait_for(done)


async def test_an_ads_creative_is_copied_beside_its_link(env: EventsEnv) -> None:
    photo = env.cdn.add("ad-photo", body=JPEG, content_type="image/jpeg")
    video = env.cdn.add("ad-video", body=MP4, content_type="video/mp4")
    answer = await env.post(from_ad("customer_text_from_ad", "mid-from-ad", photo_url=photo, video_url=video))
    message_id = answer["data"]["message"]["id"]
    doc = await creative_settled(env, message_id, "photo", "video")
    media = doc["referral"]["media"]
    assert media["photo"]["processing_status"] == media["video"]["processing_status"] == "completed"
    for kind, body in (("photo", JPEG), ("video", MP4)):
        served = await env.client.get(media[kind]["media_file"], token=env.token)
        assert served.code == 200 and served.body == body
    assert doc["referral"]["ads_context_data"] == {
        "ad_title": "Autumn sale - 20% off jackets",
        "photo_url": photo,  # Instagram's links are kept
        "video_url": video,
    }
    # The text is what the message shows: complete from the start, whatever the ad's copies
    # do (no update below moves its processing_status), and the creative is not its media.
    assert doc["processing_status"] == "completed" and doc.get("media_file") is None
    updates = [e for e in env.events("message_updated") if e.data["message"]["id"] == message_id]
    assert [e.data["changes"] for e in updates] == [["referral"], ["referral"]]
    shown = await env.ws_message(message_id)
    assert shown["referral"]["media"]["photo"]["media_file"] == media["photo"]["media_file"]
    # A redelivery queues nothing new.
    await env.post(from_ad("customer_text_from_ad", "mid-from-ad", photo_url=photo, video_url=video))
    assert len(await env.core.store.media_jobs.for_message(ObjectId(message_id))) == 2
    assert env.cdn.count("ad-photo") == 1 and env.cdn.count("ad-video") == 1


async def test_an_unsent_message_from_an_ad_keeps_its_referral_without_our_copies(env: EventsEnv) -> None:
    photo = env.cdn.add("ad-unsent", body=JPEG, content_type="image/jpeg")
    answer = await env.post(from_ad("customer_text_from_ad", "mid-ad-unsent", photo_url=photo, video_url=None))
    message_id = answer["data"]["message"]["id"]
    doc = await creative_settled(env, message_id, "photo")
    copy_path = doc["referral"]["media"]["photo"]["media_file"]
    unsend = {
        "sender": {"id": CUSTOMER_A},
        "recipient": {"id": ACCOUNT_ID},
        "timestamp": 1_763_550_000_000,
        "message": {"mid": "mid-ad-unsent", "is_deleted": True},
    }
    await env.post(messaging_body(unsend))
    deleted = await env.core.store.message_updates.get(ObjectId(message_id))
    assert deleted["is_deleted"] and deleted["content"] == ""
    assert deleted["referral"]["ad_id"] == "120200000000000901" and deleted["referral"]["media"] is None
    assert (await env.client.get(copy_path, token=env.token)).code == 404  # the copy went with the message


async def test_an_expired_ad_creative_fails_alone(env: EventsEnv) -> None:
    expired = env.cdn.url("ad-expired")
    body = from_ad("referral", "ref-expired-ad", photo_url=expired, video_url=None)
    answer = await env.post(body)
    message_id = answer["data"]["message"]["id"]
    doc = await creative_settled(env, message_id, "photo")
    assert doc["referral"]["media"] == {"photo": {"processing_status": "failed", "error": "expired_link_404"}}
    assert doc["processing_status"] == "completed"  # the referral itself is all there
    # A creative is not an attachment of the message: no fresh link was asked for (before
    # the job failed); the new customer's profile look-up may be there.
    assert [r for r in env.graph.requests if r["fields"] == "attachments"] == []


async def test_generic_content_type_is_sniffed(env: EventsEnv) -> None:
    message_id = await image_message(env, "octet", body=JPEG, content_type="application/octet-stream")
    doc = await settled(env, message_id)
    assert doc["processing_status"] == "completed"
    response = await env.client.get(f"/media/{doc['media_file']}", token=env.token)
    assert response.headers["Content-Type"] == "image/jpeg"


async def test_server_errors_are_retried_with_backoff(env: EventsEnv) -> None:
    message_id = await image_message(env, "flaky", body=JPEG, content_type="image/jpeg", fail_times=2)
    doc = await settled(env, message_id)
    assert doc["processing_status"] == "completed"
    job = await job_of(env, message_id)
    assert job["attempts"] == 3 and env.cdn.count("flaky") == 3
    metrics = (await env.client.get("/metrics")).body
    assert b'igsync_media_jobs_total{outcome="retried"} 2.0' in metrics


async def test_retries_stop_after_max_attempts(env: EventsEnv) -> None:
    message_id = await image_message(env, "down", body=JPEG, content_type="image/jpeg", fail_times=100)
    doc = await settled(env, message_id)
    assert doc["processing_status"] == "failed" and doc["attachments"][0]["error"] == "http_503"
    assert env.cdn.count("down") == 3  # media_max_attempts in these tests


@pytest.mark.parametrize("env", [{"media_timeout_secs": 0.5, "media_lease_secs": 2.0}], indirect=True)
async def test_slow_response_times_out_and_is_retried(env: EventsEnv) -> None:
    message_id = await image_message(env, "slow", body=JPEG, content_type="image/jpeg", delay_secs=1.5, slow_times=1)
    doc = await settled(env, message_id)
    assert doc["processing_status"] == "completed"
    job = await job_of(env, message_id)
    assert job["attempts"] == 2 and job["last_retry_error"] == "timeout"


# -- durability ----------------------------------------------------------------------------------


async def test_an_expired_lease_is_taken_over(env: EventsEnv) -> None:
    """A worker that died holding a job: once its lease ends, another worker finishes it."""
    await env.core.media.stop()  # no worker here while we stage the dead one's claim
    message_id = await image_message(env, "orphaned-job", body=JPEG, content_type="image/jpeg")
    jobs = env.core.store.media_jobs
    claimed = await jobs.claim("dead-worker", 0.5)
    assert claimed is not None and str(claimed["message_id"]) == message_id
    assert await jobs.claim("other-worker", 30) is None  # held: nobody else gets it
    await env.core.media.start()
    doc = await settled(env, message_id)
    assert doc["processing_status"] == "completed"
    job = await job_of(env, message_id)
    assert job["attempts"] == 2 and job["lease_owner"] == env.core.media.owner


async def test_two_processes_download_each_file_once(env: EventsEnv, stores: Any, tmp_path: Path) -> None:
    second = await start_server(env.core.settings)
    try:
        ids = []
        for i in range(8):
            url = env.cdn.add(f"f{i}", body=JPEG, content_type="image/jpeg", delay_secs=0.05)
            item = {
                "sender": {"id": CUSTOMER_A},
                "recipient": {"id": ACCOUNT_ID},
                "timestamp": 1_763_540_000_000 + i,
                "message": {"mid": f"media-{i}", "attachments": [{"type": "image", "payload": {"url": url}}]},
            }
            client = env.client if i % 2 else second.client
            response = await client.webhook(messaging_body(item))
            ids.append(body_of(response)["data"]["message"]["id"])
        for message_id in ids:
            assert (await settled(env, message_id))["processing_status"] == "completed"
        assert all(env.cdn.count(f"f{i}") == 1 for i in range(8))
        owners = {(await job_of(env, m))["lease_owner"] for m in ids}
        assert owners <= {env.core.media.owner, second.core.media.owner}
    finally:
        await stop_server(second, drop=False)


# -- unsend --------------------------------------------------------------------------------------


async def test_unsend_removes_the_stored_media(env: EventsEnv) -> None:
    message_id = await image_message(env, "to-unsend", body=JPEG, content_type="image/jpeg")
    doc = await settled(env, message_id)
    file_id = doc["media_file"]
    assert await env.core.store.media_files.info(file_id) is not None
    unsend = {
        "sender": {"id": CUSTOMER_A},
        "recipient": {"id": ACCOUNT_ID},
        "timestamp": 1_763_550_000_000,
        "message": {"mid": doc["mid"], "is_deleted": True},
    }
    answer = await env.post(messaging_body(unsend))
    assert answer["changes"] == ["is_deleted", "content"]
    assert await env.core.store.media_files.info(file_id) is None
    assert await env.core.store.db["media.chunks"].count_documents({"files_id": file_id}) == 0
    assert (await env.client.get(f"/media/{file_id}", token=env.token)).code == 404
    deleted = await env.core.store.message_updates.get(ObjectId(message_id))
    assert deleted["is_deleted"] and deleted["attachments"] == [] and deleted["media_file"] is None
    assert deleted["media_url"] is None
    assert "referral" not in deleted  # none before, none made up by the unsend
    assert (await job_of(env, message_id))["state"] == "cancelled"
    assert (await env.post(messaging_body(unsend)))["changes"] == []


@pytest.mark.parametrize("env", [{"media_timeout_secs": 3.0}], indirect=True)
async def test_unsend_during_a_download_leaves_no_copy(env: EventsEnv) -> None:
    message_id = await image_message(env, "slow-unsend", body=JPEG, content_type="image/jpeg", delay_secs=0.8)
    await wait_for(lambda: env.cdn.count("slow-unsend") == 1)
    doc = await env.core.store.message_updates.get(ObjectId(message_id))
    unsend = {
        "sender": {"id": CUSTOMER_A},
        "recipient": {"id": ACCOUNT_ID},
        "timestamp": 1_763_560_000_000,
        "message": {"mid": doc["mid"], "is_deleted": True},
    }
    await env.post(messaging_body(unsend))

    async def cancelled() -> bool:
        return (await job_of(env, message_id))["state"] == "cancelled"

    await wait_for(cancelled)

    # The download finished after the unsend: its copy was thrown away, not attached.
    async def quiet() -> bool:
        return await env.core.store.db["media.files"].count_documents({}) == 0

    await wait_for(quiet)
    final = await env.core.store.message_updates.get(ObjectId(message_id))
    assert final["is_deleted"] is True and final["media_file"] is None and final["attachments"] == []


# -- transcription -------------------------------------------------------------------------------


class EchoTranscriber:
    """A real transcriber implementation for the test: says how much audio it heard."""

    def __init__(self) -> None:
        self.clips: list[AudioClip] = []

    async def transcribe(self, clip: AudioClip) -> str | None:
        self.clips.append(clip)
        return f"{len(clip.data)} bytes of {clip.content_type}"


class BrokenTranscriber:
    async def transcribe(self, clip: AudioClip) -> str | None:
        raise RuntimeError("speech service down")


transcriber = EchoTranscriber()


@pytest.mark.parametrize("env", [{"transcriber_object": transcriber}], indirect=True)
async def test_audio_goes_through_the_transcriber(env: EventsEnv) -> None:
    url = env.cdn.add("voice", body=MP4, content_type="audio/mp4")
    message_id = (await env.post(fixture_with("customer_audio", urls=[url])))["data"]["message"]["id"]
    doc = await settled(env, message_id)
    assert doc["processing_status"] == "completed"
    assert doc["transcription"] == f"{len(MP4)} bytes of audio/mp4"
    assert transcriber.clips[-1].message_id == message_id and transcriber.clips[-1].data == MP4
    # The event follows the stored change (it is published after the write): wait for it.
    await wait_for(lambda: [e for e in env.events("message_updated") if e.data["message"]["id"] == message_id])
    [update] = [e for e in env.events("message_updated") if e.data["message"]["id"] == message_id]
    assert "transcription" in update.data["changes"]
    assert (await env.ws_message(message_id))["transcription"] == doc["transcription"]


@pytest.mark.parametrize("env", [{"transcriber_object": BrokenTranscriber()}], indirect=True)
async def test_a_failing_transcriber_does_not_fail_the_media(env: EventsEnv) -> None:
    url = env.cdn.add("voice2", body=MP4, content_type="audio/mp4")
    message_id = (await env.post(fixture_with("customer_audio", urls=[url])))["data"]["message"]["id"]
    doc = await settled(env, message_id)
    assert doc["processing_status"] == "completed" and doc["transcription"] is None


async def test_the_default_transcriber_is_a_no_op(env: EventsEnv) -> None:
    url = env.cdn.add("voice3", body=MP4, content_type="audio/mp4")
    message_id = (await env.post(fixture_with("customer_audio", urls=[url])))["data"]["message"]["id"]
    doc = await settled(env, message_id)
    assert doc["processing_status"] == "completed" and doc["transcription"] is None


# -- pure functions ----------------------------------------------------------------------------------


def test_content_type_rules() -> None:
    assert accept_content_type("image", "image/png; charset=binary", b"") == "image/png"
    assert accept_content_type("image", "image/svg+xml", b"<svg") is None
    assert accept_content_type("audio", "video/mp4", b"") == "video/mp4"
    assert accept_content_type("audio", "image/jpeg", b"") is None
    assert accept_content_type("file", "application/zip", b"PK") == "application/zip"
    assert accept_content_type("file", "text/html", b"<html>") is None
    assert accept_content_type("video", "", b"\x00\x00\x00\x18ftypmp42") == "video/mp4"
    assert accept_content_type("image", "application/octet-stream", b"GIF89a") == "image/gif"
    assert accept_content_type("image", "application/octet-stream", b"????") is None


async def test_media_job_is_queued_once_per_attachment(env: EventsEnv) -> None:
    await env.core.media.stop()
    jobs = env.core.store.media_jobs
    message = {"message_id": ObjectId(), "channel_id": env.channel_oid, "key": "attachments.0", "type": "image"}
    assert await jobs.enqueue([{**message, "url": "http://x/1"}]) == 1
    assert await jobs.enqueue([{**message, "url": "http://x/1"}, {**message, "key": "attachments.1"}]) == 1
    # Nothing is due in the future: a job retried later is not claimed early.
    future = utcnow() + dt.timedelta(hours=1)
    await jobs.coll.update_many({}, {"$set": {"next_attempt_at": future}})
    assert await jobs.claim("w", 10) is None


@pytest.mark.parametrize("env", [{"media_concurrency": 0}], indirect=True)
async def test_a_web_only_process_queues_and_a_worker_process_downloads(env: EventsEnv) -> None:
    message_id = await image_message(env, "elsewhere", body=JPEG, content_type="image/jpeg")
    [job] = await env.core.store.media_jobs.for_message(ObjectId(message_id))
    assert job["state"] == "pending" and env.cdn.count("elsewhere") == 0
    worker = await start_server(env.core.settings.replace(media_concurrency=2))
    try:
        doc = await settled(env, message_id)
        assert doc["processing_status"] == "completed"
        assert (await job_of(env, message_id))["lease_owner"] == worker.core.media.owner
    finally:
        await stop_server(worker, drop=False)
