"""Pure parts of sending: the messaging window, Meta's rates, the message object, backoff."""

from __future__ import annotations

import datetime as dt

import pytest

from models.messaging_window import MODE_HUMAN_AGENT, MODE_RESPONSE, decide, reply_window
from server.outbound.limiter import SendLimiter, TokenBucket
from server.outbound.worker import backoff_secs, meta_message

NOW = dt.datetime(2026, 12, 5, 12, 0, tzinfo=dt.UTC)
MINUTE = dt.timedelta(minutes=1)
DAY = dt.timedelta(days=1)


@pytest.mark.parametrize(
    ("ago", "support", "ai"),
    [
        (dt.timedelta(0), MODE_RESPONSE, MODE_RESPONSE),
        (DAY - MINUTE, MODE_RESPONSE, MODE_RESPONSE),
        (DAY, MODE_HUMAN_AGENT, None),  # the end of the window is outside it
        (DAY + MINUTE, MODE_HUMAN_AGENT, None),
        (7 * DAY - MINUTE, MODE_HUMAN_AGENT, None),
        (7 * DAY, None, None),
        (30 * DAY, None, None),
    ],
)
def test_the_window_at_its_edges(ago: dt.timedelta, support: str | None, ai: str | None) -> None:
    assert decide("support", NOW - ago, NOW).mode == support
    assert decide("AI", NOW - ago, NOW).mode == ai


def test_no_customer_message_means_no_reply_and_no_window() -> None:
    assert decide("support", None, NOW).mode is None
    assert reply_window(None) == {"standard_until": None, "human_agent_until": None}
    assert reply_window(NOW) == {
        "standard_until": "2026-12-06T12:00:00.000Z",
        "human_agent_until": "2026-12-12T12:00:00.000Z",
    }


def test_a_bucket_gives_a_seconds_worth_then_paces() -> None:
    now = [0.0]
    bucket = TokenBucket(10, clock=lambda: now[0])
    assert [bucket.wait_secs() for _ in range(10)] == [0.0] * 10
    assert bucket.wait_secs() == pytest.approx(0.1)
    now[0] += 0.1
    assert bucket.wait_secs() == 0.0


def test_audio_and_video_have_their_own_slower_bucket_per_channel() -> None:
    limiter = SendLimiter(text_per_sec=300, media_per_sec=10)
    assert limiter.bucket("c1", "video") is limiter.bucket("c1", "audio")
    assert limiter.bucket("c1", "video").rate == 10
    assert limiter.bucket("c1", "image") is limiter.bucket("c1", "text")
    assert limiter.bucket("c1", "text").rate == 300
    assert limiter.bucket("c2", "text") is not limiter.bucket("c1", "text")


def test_meta_message_objects_and_backoff() -> None:
    assert meta_message({"kind": "text", "text": "hi"}, "m1") == {"text": "hi", "reply_to": {"mid": "m1"}}
    assert meta_message({"kind": "image", "url": "https://x/y.jpg"}, None) == {
        "attachment": {"type": "image", "payload": {"url": "https://x/y.jpg"}}
    }
    assert [backoff_secs(n, 2.0) for n in (1, 2, 3)] == [2.0, 4.0, 8.0]
    assert backoff_secs(30, 2.0) == 600.0
