"""Pure rules of triggers: retry schedule, Retry-After, signature helper, which targets, shapes;
and the metrics every dashboard relies on existing from the start."""

from __future__ import annotations

import datetime as dt
import email.utils
import random
from collections.abc import AsyncIterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from config import ConfigError, Settings
from igsync_client.triggers import verify_trigger_signature
from models.serializers import channel_triggers
from server.ops.metrics import TRIGGER_ATTEMPT_RESULTS, TRIGGER_OUTCOMES, TRIGGER_TARGETS, Metrics
from server.triggers.outbox import channel_targets
from server.triggers.protocol import parse_retry_after, retry_delay, signature_header
from tests.fakes.receiver import TriggerReceiver
from tests.support.helpers import wait_for
from tests.support.server import RunningServer, make_settings, start_server, stop_server
from tests.support.triggers import FAST_TRIGGERS, MessageSender, connect_with_triggers, http_triggers

NOW = dt.datetime(2026, 11, 25, 10, 0, tzinfo=dt.UTC)


def test_default_schedule_spans_about_an_hour() -> None:
    settings = Settings()
    waits = [
        retry_delay(n, base_secs=settings.trigger_retry_base_secs, max_secs=settings.trigger_retry_max_secs)
        for n in range(1, settings.trigger_max_attempts)
    ]
    assert len(waits) == 7  # between 8 attempts
    nominal = [30 * 2**i for i in range(7)]  # 30 s … 32 min
    for wait, step in zip(waits, nominal, strict=True):
        assert 0.8 * step <= wait <= 1.2 * step
    assert 0.8 * 3810 <= sum(waits) <= 1.2 * 3810  # 63.5 min nominal


def test_jitter_spreads_retries_and_the_cap_holds() -> None:
    rng = random.Random(7)
    waits = {retry_delay(3, base_secs=10, max_secs=3600, rng=rng) for _ in range(50)}
    assert len(waits) > 40 and min(waits) >= 32 and max(waits) <= 48
    assert retry_delay(40, base_secs=30, max_secs=3600) <= 3600


def test_retry_after_is_a_floor_and_is_capped() -> None:
    assert retry_delay(1, base_secs=0.05, max_secs=60, retry_after_secs=5) == 5
    assert retry_delay(1, base_secs=0.05, max_secs=60, retry_after_secs=86400) == 60
    assert retry_delay(6, base_secs=30, max_secs=3600, retry_after_secs=1) >= 0.8 * 960


def test_parse_retry_after() -> None:
    assert parse_retry_after("120", NOW) == 120
    assert parse_retry_after(" 0 ", NOW) == 0
    later = email.utils.format_datetime(NOW + dt.timedelta(seconds=90), usegmt=True)
    assert parse_retry_after(later, NOW) == 90
    earlier = email.utils.format_datetime(NOW - dt.timedelta(seconds=90), usegmt=True)
    assert parse_retry_after(earlier, NOW) == 0
    for junk in (None, "", "soon", "-5", "1.5e3"):
        assert parse_retry_after(junk, NOW) is None


@given(body=st.binary(max_size=2000), secret=st.text(min_size=1, max_size=64))
def test_the_client_helper_verifies_what_igsync_signs(body: bytes, secret: str) -> None:
    header = signature_header(body, secret)
    assert verify_trigger_signature(body, header, secret)
    assert not verify_trigger_signature(body + b"x", header, secret)
    assert not verify_trigger_signature(body, header, secret + "x")


def test_the_client_helper_rejects_malformed_headers() -> None:
    body = b'{"event":"customer_message"}'
    good = signature_header(body, "s3cret-0123456789abcdef")
    assert verify_trigger_signature(
        body, "  " + good.upper().replace("SHA256=", "sha256=") + " ", "s3cret-0123456789abcdef"
    )
    for header in (None, "", good[len("sha256=") :], "sha1=" + good[7:], "sha256=", "sha256=zz", "sha256=é"):
        assert not verify_trigger_signature(body, header, "s3cret-0123456789abcdef")
    assert not verify_trigger_signature(body, good, "")


def test_which_channels_trigger() -> None:
    http = {"url": "http://x/h", "secret": "s" * 16}
    base = {"is_connect": True, "triggers": {"http": http, "redis_stream": True}}
    assert channel_targets(base) == ["http", "redis_stream"]
    assert channel_targets({**base, "ai_enabled": True}) == ["http", "redis_stream"]
    assert channel_targets({**base, "ai_enabled": False}) == []
    assert channel_targets({**base, "is_connect": False}) == []
    assert channel_targets({"is_connect": True}) == []
    assert channel_targets({"is_connect": True, "triggers": {"http": None, "redis_stream": True}}) == ["redis_stream"]
    assert channel_targets(None) == []


def test_channel_triggers_never_show_the_secret() -> None:
    shown = channel_triggers({"http": {"url": "https://u:p@[::1]:8443/a/b?k=v#f", "secret": "x" * 20}})
    assert shown == {
        "http": {"url": "https://[::1]:8443/a/b", "timeout_secs": None, "max_attempts": None, "secret_set": True},
        "redis_stream": False,
    }
    assert channel_triggers(None) == {"http": None, "redis_stream": False}


def test_trigger_settings_are_validated() -> None:
    with pytest.raises(ConfigError, match="IGSYNC_TRIGGER_WORKERS"):
        Settings.from_env({"IGSYNC_TRIGGER_WORKERS": "-1"})
    with pytest.raises(ConfigError, match="IGSYNC_TRIGGER_RETRY_BASE_SECS"):
        Settings.from_env({"IGSYNC_TRIGGER_RETRY_BASE_SECS": "0"})
    with pytest.raises(ConfigError, match="IGSYNC_TRIGGER_RETRY_MAX_SECS"):
        Settings.from_env({"IGSYNC_TRIGGER_RETRY_BASE_SECS": "60", "IGSYNC_TRIGGER_RETRY_MAX_SECS": "10"})
    assert Settings.from_env({"IGSYNC_TRIGGER_WORKERS": "0"}).trigger_workers == 0


def test_trigger_metrics_exist_at_zero_before_any_delivery() -> None:
    metrics = Metrics()
    text = metrics.render().decode()
    for target in TRIGGER_TARGETS:
        for outcome in TRIGGER_OUTCOMES:
            assert f'igsync_trigger_deliveries_total{{outcome="{outcome}",target="{target}"}} 0.0' in text
        for result in TRIGGER_ATTEMPT_RESULTS:
            assert f'igsync_trigger_attempts_total{{result="{result}",target="{target}"}} 0.0' in text
        assert f'igsync_trigger_delivery_seconds_count{{target="{target}"}} 0.0' in text
    for gauge in (
        "igsync_trigger_dead_letters",
        "igsync_trigger_pending_jobs",
        "igsync_trigger_oldest_pending_seconds",
    ):
        assert f"{gauge} 0.0" in text


@pytest.fixture
async def igsync(stores: Any, tmp_path: Any) -> AsyncIterator[RunningServer]:
    running = await start_server(make_settings(stores, tmp_path, **FAST_TRIGGERS))
    yield running
    await stop_server(running)


async def test_lag_gauges_follow_an_outage(igsync: RunningServer) -> None:
    receiver = TriggerReceiver()  # down
    await connect_with_triggers(igsync.client, http_triggers(receiver.url, max_attempts=50))
    await MessageSender(igsync.client).send("waiting")

    def sample(name: str) -> float:
        return igsync.core.metrics.registry.get_sample_value(name) or 0.0

    await wait_for(lambda: sample("igsync_trigger_oldest_pending_seconds") > 0.2)
    assert sample("igsync_trigger_pending_jobs") == 1
    metrics_page = (await igsync.client.get("/metrics")).body.decode()
    assert "igsync_trigger_oldest_pending_seconds" in metrics_page

    receiver.start()
    try:
        await wait_for(lambda: sample("igsync_trigger_pending_jobs") == 0)
        await wait_for(lambda: sample("igsync_trigger_oldest_pending_seconds") == 0)
        count = igsync.core.metrics.registry.get_sample_value(
            "igsync_trigger_delivery_seconds_count", {"target": "http"}
        )
        assert count == 1
    finally:
        await receiver.stop()
