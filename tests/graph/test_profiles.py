"""Customer profiles: a best-effort Graph API look-up on a customer's first
message, off the webhook's hot path, against a fake Graph API (a real local server) that
answers profiles, Meta's error codes and slow responses. The token is never logged."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from pathlib import Path
from typing import Any

import pytest
from bson import ObjectId

from models.media_files import BUCKET
from models.timeutil import utcnow
from server.graph.client import Profile, classify
from server.graph.profiles import REFRESHABLE
from tests.fakes.cdn import JPEG
from tests.fakes.graph import ACCESS_TOKEN, GraphAnswer
from tests.support.events import EventsEnv, connect_channel, events_env
from tests.support.helpers import ADMIN_TOKEN, CUSTOMER_A, CUSTOMER_B, body_of, messaging_body, text_item, wait_for

CUSTOMER_C = "6200000000000103"


@pytest.fixture
async def env(stores: Any, tmp_path: Path, request: pytest.FixtureRequest) -> Any:
    async with events_env(stores, tmp_path, **getattr(request, "param", {})) as e:
        yield e


async def first_message(env: EventsEnv, customer: str, mid: str) -> dict[str, Any]:
    return await env.post(messaging_body(text_item(mid, "hello", sender=customer, timestamp_ms=1_763_600_000_000)))


async def looked_up(env: EventsEnv, answer: dict[str, Any]) -> dict[str, Any]:
    customer_id = ObjectId(answer["data"]["customer"]["id"])

    async def checked() -> Any:
        doc = await env.core.store.customers.get(customer_id)
        return doc if doc.get("profile_status") else None

    return await wait_for(checked)


async def test_profile_is_fetched_and_reaches_the_inbox(env: EventsEnv) -> None:
    # The fake CDN, so that copying the picture never leaves the machine (here: an expired link).
    picture = env.cdn.url("pic.jpg")
    env.graph.profile(CUSTOMER_A, name="Ana Maria Costa", username="ana.costa", profile_pic=picture)
    answer = await first_message(env, CUSTOMER_A, "p-1")
    assert answer["data"]["customer"]["was_created"] is True
    customer = await looked_up(env, answer)
    assert customer["first_name"] == "Ana" and customer["last_name"] == "Maria Costa"
    assert customer["username"] == "ana.costa" and customer["profile_pic"] == picture
    assert customer["enhanced_data_fetched"] is True and customer["profile_status"] == "fetched"

    [request] = env.graph.requests
    assert request["version"] == "v25.0" and request["user_id"] == CUSTOMER_A
    assert request["fields"] == "name,username,profile_pic" and request["access_token"] == ACCESS_TOKEN

    async def announced() -> Any:
        return [
            e for e in env.events("conversation_updated") if e.data["conversation"]["customer"]["enhanced_data_fetched"]
        ]

    # The look-up runs beside the rest of the ingest: when it wins, the message's own
    # conversation_updated already shows the profile too.
    event = (await wait_for(announced))[-1]
    shown = event.data["conversation"]["customer"]
    assert shown["first_name"] == "Ana" and shown["username"] == "ana.costa"
    conversation = body_of(await env.client.get(f"/api/v1/conversations/{event.conversation_id}", token=env.token))
    assert conversation["conversation"]["customer"]["username"] == "ana.costa"

    # The customer's next message asks nothing more.
    await env.post(messaging_body(text_item("p-2", "again", sender=CUSTOMER_A)))
    await env.core.profiles.idle()
    assert len(env.graph.requests) == 1


async def test_the_profile_picture_is_copied_and_served_after_its_link_expires(env: EventsEnv) -> None:
    """Instagram's picture links expire like attachment links: the look-up stores a copy beside
    the link (``profile_pic_file``) and the inbox hears of it."""
    link = env.cdn.add("ana.jpg")
    env.graph.profile(CUSTOMER_A, name="Ana Costa", profile_pic=link)
    answer = await first_message(env, CUSTOMER_A, "pic-1")
    await env.core.profiles.idle()

    customer = await env.core.store.customers.get(ObjectId(answer["data"]["customer"]["id"]))
    assert customer["profile_pic"] == link and customer["profile_pic_file"].startswith("/media/")
    env.cdn.files.clear()  # the link expires: our copy is what the inbox shows from now on
    served = await env.client.get(customer["profile_pic_file"], token=env.token)
    assert served.code == 200 and served.headers["Content-Type"] == "image/jpeg" and served.body == JPEG
    shown = [e.data["conversation"]["customer"] for e in env.events("conversation_updated")]
    assert shown[-1]["profile_pic_file"] == customer["profile_pic_file"] and shown[-1]["profile_pic"] == link
    conversation_id = answer["data"]["conversation"]["id"]
    listed = body_of(await env.client.get(f"/api/v1/conversations/{conversation_id}", token=env.token))
    assert listed["conversation"]["customer"]["profile_pic_file"] == customer["profile_pic_file"]
    assert env.cdn.count("ana.jpg") == 1
    assert await env.core.store.db[f"{BUCKET}.files"].count_documents({}) == 1


@pytest.mark.parametrize(
    "spec",
    [{"status": 404}, {"content_type": "text/html", "body": b"<script>alert(1)</script>"}],
    ids=["expired-link", "not-an-image"],
)
async def test_a_picture_that_cannot_be_copied_leaves_the_link(env: EventsEnv, spec: dict[str, Any]) -> None:
    link = env.cdn.add("bad.jpg", **spec)
    env.graph.profile(CUSTOMER_A, name="Ana Costa", profile_pic=link)
    answer = await first_message(env, CUSTOMER_A, "pic-bad")
    await env.core.profiles.idle()

    customer = await env.core.store.customers.get(ObjectId(answer["data"]["customer"]["id"]))
    assert customer["profile_status"] == "fetched" and customer["first_name"] == "Ana"
    assert customer["profile_pic"] == link and customer["profile_pic_file"] is None
    assert await env.core.store.db[f"{BUCKET}.files"].count_documents({}) == 0
    assert env.cdn.count("bad.jpg") == 1  # one attempt: the look-up is best-effort


async def test_a_copy_of_a_picture_replaced_meanwhile_is_dropped(env: EventsEnv) -> None:
    """The copy is attached only if the customer still shows the picture it was made from."""
    gate = asyncio.Event()
    link = env.cdn.add("old.jpg", gate=gate)
    env.graph.profile(CUSTOMER_A, name="Ana Costa", profile_pic=link)
    answer = await first_message(env, CUSTOMER_A, "pic-race")
    customer_id = ObjectId(answer["data"]["customer"]["id"])
    await wait_for(lambda: env.cdn.count("old.jpg") == 1)  # the download is held at the CDN
    await env.core.store.customers.update_profile(customer_id, {"profile_pic": "https://cdn.example/new.jpg"})
    gate.set()
    await env.core.profiles.idle()

    customer = await env.core.store.customers.get(customer_id)
    assert customer["profile_pic_file"] is None
    assert await env.core.store.db[f"{BUCKET}.files"].count_documents({}) == 0


# -- returning customers: looked up again after IGSYNC_PROFILE_REFRESH_DAYS ---------------------

WEEK_AND_A_DAY_SECS = 8 * 86400


class Clock:
    """The profile service's in-process memory, moved forward by hand: no test sleeps."""

    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


async def later(env: EventsEnv, customer_id: ObjectId, clock: Clock, *, backdate: bool = True) -> None:
    """Eight days on: for this process (its memory) and, with ``backdate``, for MongoDB."""
    clock.now += WEEK_AND_A_DAY_SECS
    if backdate:
        customer = await env.core.store.customers.get(customer_id)
        checked = customer["profile_checked_at"] - dt.timedelta(seconds=WEEK_AND_A_DAY_SECS)
        await env.core.store.customers.update_profile(customer_id, {"profile_checked_at": checked})


async def again(env: EventsEnv, customer: str, mid: str) -> None:
    await env.post(messaging_body(text_item(mid, "me again", sender=customer, timestamp_ms=1_763_700_000_000)))
    await env.core.profiles.idle()  # what the message scheduled has run


@pytest.fixture
def clock(env: EventsEnv) -> Clock:
    fake = Clock()
    env.core.profiles.clock = fake
    return fake


async def test_a_returning_customer_is_looked_up_again_and_the_old_picture_copy_goes(
    env: EventsEnv, clock: Clock
) -> None:
    env.graph.profile(CUSTOMER_A, name="Ana Costa", profile_pic=env.cdn.add("ana-2025.jpg"))
    answer = await first_message(env, CUSTOMER_A, "rf-1")
    await env.core.profiles.idle()
    customer_id = ObjectId(answer["data"]["customer"]["id"])
    first = await env.core.store.customers.get(customer_id)
    old_copy = ObjectId(first["profile_pic_file"].removeprefix("/media/"))

    new_link = env.cdn.add("ana-2026.jpg", body=JPEG[::-1], content_type="image/jpeg")
    env.graph.profile(CUSTOMER_A, name="Ana Costa Silva", username="ana.silva", profile_pic=new_link)
    await again(env, CUSTOMER_A, "rf-2")  # within the week: nothing asked
    assert len(env.graph.requests_for(CUSTOMER_A)) == 1
    await later(env, customer_id, clock)
    await again(env, CUSTOMER_A, "rf-3")

    assert len(env.graph.requests_for(CUSTOMER_A)) == 2
    customer = await env.core.store.customers.get(customer_id)
    assert customer["last_name"] == "Costa Silva" and customer["username"] == "ana.silva"
    assert customer["profile_pic"] == new_link and customer["profile_pic_file"] != first["profile_pic_file"]
    assert customer["profile_checked_at"] > first["profile_checked_at"]
    served = await env.client.get(customer["profile_pic_file"], token=env.token)
    assert served.code == 200 and served.body == JPEG[::-1]
    assert await env.core.store.media_files.info(old_copy) is None  # the replaced copy is deleted
    assert await env.core.store.db[f"{BUCKET}.files"].count_documents({}) == 1
    shown = env.events("conversation_updated")[-1].data["conversation"]["customer"]
    assert shown["last_name"] == "Costa Silva" and shown["profile_pic_file"] == customer["profile_pic_file"]
    await again(env, CUSTOMER_A, "rf-4")  # refreshed just now: not again
    assert len(env.graph.requests_for(CUSTOMER_A)) == 2


async def test_a_refresh_done_by_another_process_is_not_repeated(env: EventsEnv, clock: Clock) -> None:
    env.graph.profile(CUSTOMER_A, name="Ana Costa")
    customer = await looked_up(env, await first_message(env, CUSTOMER_A, "rp-1"))
    # This process has not seen the customer for a week, but MongoDB says another process
    # looked them up a moment ago: its claim fails and nothing is asked.
    await later(env, customer["_id"], clock, backdate=False)
    await again(env, CUSTOMER_A, "rp-2")
    assert len(env.graph.requests_for(CUSTOMER_A)) == 1


async def test_of_two_claims_at_once_one_wins(env: EventsEnv) -> None:
    env.graph.profile(CUSTOMER_A, name="Ana Costa")
    customer = await looked_up(env, await first_message(env, CUSTOMER_A, "rc-1"))
    await later(env, customer["_id"], Clock())  # checked eight days ago, as far as MongoDB knows
    claim = env.core.store.customers.claim_profile_refresh
    cutoff = utcnow() - dt.timedelta(days=7)  # what the service asks: not checked for a week
    results = await asyncio.gather(
        *[claim(customer["_id"], checked_before=cutoff, statuses=REFRESHABLE) for _ in range(8)]
    )
    assert sorted(results) == [False] * 7 + [True]


async def test_a_taken_down_picture_clears_the_copy(env: EventsEnv, clock: Clock) -> None:
    env.graph.profile(CUSTOMER_A, name="Ana Costa", profile_pic=env.cdn.add("ana.jpg"))
    answer = await first_message(env, CUSTOMER_A, "rd-1")
    await env.core.profiles.idle()
    customer_id = ObjectId(answer["data"]["customer"]["id"])
    env.graph.profile(CUSTOMER_A, name="Ana Costa")  # no picture any more
    await later(env, customer_id, clock)
    await again(env, CUSTOMER_A, "rd-2")
    customer = await env.core.store.customers.get(customer_id)
    assert customer["profile_pic"] is None and customer["profile_pic_file"] is None
    assert await env.core.store.db[f"{BUCKET}.files"].count_documents({}) == 0


async def test_a_failed_refresh_keeps_the_known_names(env: EventsEnv, clock: Clock) -> None:
    env.graph.profile(CUSTOMER_A, name="Ana Costa")
    customer = await looked_up(env, await first_message(env, CUSTOMER_A, "re-1"))
    env.graph.error(CUSTOMER_A, 4, message="Application request limit reached")
    await later(env, customer["_id"], clock)
    await again(env, CUSTOMER_A, "re-2")
    after = await env.core.store.customers.get(customer["_id"])
    assert after["profile_status"] == "error" and after["first_name"] == "Ana" and after["last_name"] == "Costa"
    assert len(env.graph.requests_for(CUSTOMER_A)) == 1 + 3  # the refresh tried profile_max_attempts times


@pytest.mark.parametrize("code", [230, 9010])
async def test_an_unavailable_profile_is_not_asked_again(env: EventsEnv, clock: Clock, code: int) -> None:
    env.graph.error(CUSTOMER_A, code, message="User consent is required to access user profile")
    customer = await looked_up(env, await first_message(env, CUSTOMER_A, f"ru-{code}"))
    await later(env, customer["_id"], clock)
    await again(env, CUSTOMER_A, f"ru-{code}-2")
    assert len(env.graph.requests_for(CUSTOMER_A)) == 1


@pytest.mark.parametrize("env", [{"profile_refresh_days": 0}], indirect=True)
async def test_refreshes_can_be_turned_off(env: EventsEnv, clock: Clock) -> None:
    env.graph.profile(CUSTOMER_A, name="Ana Costa")
    customer = await looked_up(env, await first_message(env, CUSTOMER_A, "ro-1"))
    await later(env, customer["_id"], clock)
    await again(env, CUSTOMER_A, "ro-2")
    assert len(env.graph.requests_for(CUSTOMER_A)) == 1


async def test_the_webhook_does_not_wait_for_the_profile(env: EventsEnv) -> None:
    gate = asyncio.Event()
    env.graph.sequence(CUSTOMER_A, GraphAnswer(200, {"id": CUSTOMER_A, "name": "Slow Poke"}, gate=gate))
    # The Graph API holds its answer until we open the gate: the webhook answers anyway.
    answer = await first_message(env, CUSTOMER_A, "p-slow")
    assert answer["data"]["customer"]["enhanced_data_fetched"] is False
    await wait_for(lambda: env.graph.inflight == 1)
    customer = await env.core.store.customers.get(ObjectId(answer["data"]["customer"]["id"]))
    assert customer["enhanced_data_fetched"] is False
    gate.set()
    customer = await looked_up(env, answer)
    assert customer["first_name"] == "Slow" and customer["enhanced_data_fetched"] is True


async def test_expired_token_marks_the_channel_and_stops_asking(env: EventsEnv) -> None:
    env.graph.error(CUSTOMER_A, 190, message="Error validating access token: Session has expired")
    customer = await looked_up(env, await first_message(env, CUSTOMER_A, "t-1"))
    assert customer["profile_status"] == "reauth_required"
    assert customer["first_name"] == f"Unknown (IG: {CUSTOMER_A})" and customer["enhanced_data_fetched"] is False
    channels = body_of(await env.client.get("/api/v1/channels", token=env.token))["channels"]
    assert channels[0]["needs_reauth"] is True

    # A second new customer: no call at all while the channel waits for a new token.
    other = await looked_up(env, await first_message(env, CUSTOMER_B, "t-2"))
    assert other["profile_status"] == "reauth_required"
    assert len(env.graph.requests) == 1

    # The inbox heard of it at once.
    [announced] = [e for e in env.events("channel_updated") if e.data["channel"].get("needs_reauth")]
    assert announced.channel_id == env.channel["id"]

    # Reconnecting with a new token lifts it, and both look-ups that waited on it run now.
    env.graph.profile(CUSTOMER_A, name="Ana Costa")
    env.graph.profile(CUSTOMER_B, name="Bruno Lima")
    await connect_channel(env.server, access_token=ACCESS_TOKEN)
    channels = body_of(await env.client.get("/api/v1/channels", token=env.token))["channels"]
    assert "needs_reauth" not in channels[0]

    async def both_fetched() -> bool:
        docs = [await env.core.store.customers.get(c["_id"]) for c in (customer, other)]
        return all(d["profile_status"] == "fetched" for d in docs) and not any("awaiting_reauth" in d for d in docs)

    await wait_for(both_fetched)
    assert [r["user_id"] for r in env.graph.requests[1:]].count(CUSTOMER_A) == 1
    env.graph.profile(CUSTOMER_C, name="Carla")
    third = await looked_up(env, await first_message(env, CUSTOMER_C, "t-3"))
    assert third["profile_status"] == "fetched" and third["first_name"] == "Carla"


@pytest.mark.parametrize(("code", "subcode"), [(230, None), (9010, None), (100, 2018001)])
async def test_unreachable_profiles_get_a_placeholder_and_no_retry(
    env: EventsEnv, code: int, subcode: int | None
) -> None:
    env.graph.error(CUSTOMER_A, code, message="User consent is required to access user profile", subcode=subcode)
    customer = await looked_up(env, await first_message(env, CUSTOMER_A, f"u-{code}"))
    assert customer["profile_status"] == "unavailable"
    assert customer["first_name"] == f"Unknown (IG: {CUSTOMER_A})"
    assert customer["enhanced_data_fetched"] is False
    assert len(env.graph.requests) == 1
    metrics = (await env.client.get("/metrics")).body
    assert b'igsync_profile_lookups_total{outcome="unavailable"} 1.0' in metrics


async def test_meta_outage_answering_100_is_retried_not_taken_as_no_such_user(env: EventsEnv) -> None:
    # July 2026: Meta answered "(#100) Unsupported get request" for hours to calls that work.
    outage = GraphAnswer(400, {"error": {"code": 100, "error_subcode": 33, "message": "Unsupported get request"}})
    env.graph.sequence(CUSTOMER_A, outage, outage, GraphAnswer(200, {"id": CUSTOMER_A, "name": "Ana Costa"}))
    customer = await looked_up(env, await first_message(env, CUSTOMER_A, "outage-100"))
    assert customer["profile_status"] == "fetched" and customer["first_name"] == "Ana"
    assert len(env.graph.requests_for(CUSTOMER_A)) == 3


async def test_transient_errors_are_retried_then_given_up(env: EventsEnv) -> None:
    env.graph.sequence(
        CUSTOMER_A,
        GraphAnswer(500, {"error": {"code": 2, "message": "Service temporarily unavailable"}}),
        GraphAnswer(502, {}),
        GraphAnswer(200, {"id": CUSTOMER_A, "username": "only_username"}),
    )
    customer = await looked_up(env, await first_message(env, CUSTOMER_A, "r-1"))
    assert customer["profile_status"] == "fetched" and customer["first_name"] == "only_username"
    assert len(env.graph.requests_for(CUSTOMER_A)) == 3

    env.graph.error(CUSTOMER_B, 4, message="Application request limit reached")
    other = await looked_up(env, await first_message(env, CUSTOMER_B, "r-2"))
    assert other["profile_status"] == "error" and other["first_name"] == f"Unknown (IG: {CUSTOMER_B})"
    assert len(env.graph.requests_for(CUSTOMER_B)) == 3  # profile_max_attempts, then quiet


@pytest.mark.parametrize("env", [{"graph_api_timeout_secs": 0.3, "profile_max_attempts": 1}], indirect=True)
async def test_a_slow_graph_api_times_out(env: EventsEnv) -> None:
    env.graph.sequence(CUSTOMER_A, GraphAnswer(200, {"id": CUSTOMER_A, "name": "Too Late"}, delay_secs=2.0))
    customer = await looked_up(env, await first_message(env, CUSTOMER_A, "s-1"))
    assert customer["profile_status"] == "error" and customer["enhanced_data_fetched"] is False


async def test_a_channel_without_token_is_not_looked_up(stores: Any, tmp_path: Path) -> None:
    async with events_env(stores, tmp_path) as env:
        await env.client.post(
            "/api/v1/channels",
            {"page_id": "17841400000000777", "username": "notoken", "owner": {"id": 1, "email": "owner@example.com"}},
            token=ADMIN_TOKEN,
        )
        answer = await env.post(
            messaging_body(text_item("n-1", "hi", recipient="17841400000000777"), account_id="17841400000000777")
        )
        customer = await looked_up(env, answer)
        assert customer["profile_status"] == "no_token"
        assert customer["first_name"] is None and customer["enhanced_data_fetched"] is False
        assert env.graph.requests == []
        # Nothing visible changed, so the inbox is told nothing beyond the message's own events.
        conversation_id = answer["data"]["conversation"]["id"]
        updates = [e for e in env.events("conversation_updated") if e.conversation_id == conversation_id]
        assert len(updates) == 1  # the message's own


@pytest.mark.parametrize("env", [{"profile_concurrency": 2}], indirect=True)
async def test_look_ups_are_bounded(env: EventsEnv) -> None:
    customers = [f"62000000000002{i:02d}" for i in range(8)]
    for igsid in customers:
        env.graph.sequence(igsid, GraphAnswer(200, {"id": igsid, "name": "N"}, delay_secs=0.15))
    body = messaging_body(*[text_item(f"b-{c}", "hi", sender=c) for c in customers])
    await env.post(body)
    await env.core.profiles.idle()
    assert len(env.graph.requests) == 8
    assert env.graph.max_inflight == 2


async def test_the_access_token_is_never_logged(env: EventsEnv, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    # As `igsync serve` configures it (server.logs): PyMongo's DEBUG command log prints whole
    # documents, stored tokens included, and is never enabled in igsync.
    caplog.set_level(logging.WARNING, logger="pymongo")
    env.graph.profile(CUSTOMER_A, name="Ok")
    env.graph.sequence(CUSTOMER_B, GraphAnswer(500, {}), GraphAnswer(200, {"id": CUSTOMER_B}))
    env.graph.error(CUSTOMER_C, 190, message=f"Invalid OAuth access token {ACCESS_TOKEN}")
    for customer, mid in ((CUSTOMER_A, "l-1"), (CUSTOMER_B, "l-2"), (CUSTOMER_C, "l-3")):
        await first_message(env, customer, mid)
    await env.core.profiles.idle()
    assert len(env.graph.requests) == 4
    assert caplog.records
    for record in caplog.records:
        text = record.getMessage() + (record.exc_text or "")
        assert ACCESS_TOKEN not in text, record.name


# -- pure functions -------------------------------------------------------------------------------


def test_error_classification() -> None:
    assert classify(190, 400) == "token_expired"
    assert {classify(c, 400) for c in (230, 9010)} == {"unavailable"}
    # 100 is Meta's catch-all (its July 2026 outage answered it for hours): only "no such user" is final.
    assert classify(100, 400) == "transient" and classify(100, 400, 33) == "transient"
    assert classify(100, 400, 2018001) == "unavailable"
    assert classify(190, 400, 463) == "token_expired" and classify(551, 400) == "unavailable"
    assert classify(80002, 400) == "transient" and classify(12345, 400, is_transient=True) == "transient"
    assert {classify(c, 400) for c in (4, 17, 32, 613)} == {"transient"}
    assert classify(None, 503) == "transient" and classify(None, 404) == "failed"
    assert classify(10, 403) == "failed"


def test_names_from_a_profile() -> None:
    assert Profile("Ana Costa", "ana", None).names() == ("Ana", "Costa")
    assert Profile("Cher", "cher", None).names() == ("Cher", None)
    assert Profile(None, "ana", None).names() == ("ana", None)
