"""A real Prometheus scraping a real igsync: what an operator will see, proven end to end.

Debian's Prometheus (installed by ``make system-deps``) is started on a free loopback port
with a temporary config and data directory, a 1 s scrape interval, the metrics bearer
token and the project's alert rules. After a scripted burst of webhooks, PromQL through
its HTTP API must return exactly what the burst produced. Scrapes are waited for by
polling the Prometheus API (observing, never sleeping for correctness).
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import time
import urllib.parse
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from config import Settings
from server.app.embedded import free_port
from server.ops.metrics import DELIVERY_BUCKETS, WEBHOOK_DURATION_BUCKETS
from tests.ops.test_deploy import dashboard_exprs
from tests.support.helpers import ROOT, Client, body_of, messaging_body, text_item, wait_for
from tests.support.observability import scrape
from tests.support.realtime import WsClient
from tests.support.server import RunningServer, connect_tenant, start_server, stop_server

pytestmark = pytest.mark.slow

METRICS_TOKEN_FOR_SCRAPES = "prometheus-scrape-token-0123456789"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"


@dataclass
class Prometheus:
    process: subprocess.Popen[bytes]
    client: Client

    async def query(self, promql: str) -> list[dict[str, Any]]:
        response = await self.client.get("/api/v1/query?" + urllib.parse.urlencode({"query": promql}))
        body = body_of(response)
        assert response.code == 200 and body["status"] == "success", (promql, body)
        return body["data"]["result"]

    async def scalar(self, promql: str) -> float | None:
        """The single value of an instant query (None when it returns no series)."""
        result = await self.query(promql)
        assert len(result) <= 1, (promql, result)
        return float(result[0]["value"][1]) if result else None

    async def by_label(self, promql: str, label: str) -> dict[str, float]:
        return {series["metric"].get(label, ""): float(series["value"][1]) for series in await self.query(promql)}


def prometheus_binary() -> str:
    found = shutil.which("prometheus")
    assert found, "prometheus is missing: run `make system-deps` (Debian package prometheus)"
    return found


@pytest.fixture
def prometheus_dir(tmp_path: Path) -> Path:
    return tmp_path / "prometheus"


@pytest.fixture
async def monitored(settings: Settings) -> AsyncIterator[RunningServer]:
    running = await start_server(settings.replace(metrics_token=METRICS_TOKEN_FOR_SCRAPES))
    yield running
    await stop_server(running)


@pytest.fixture
def prometheus(monitored: RunningServer, prometheus_dir: Path) -> Iterator[Prometheus]:
    prometheus_dir.mkdir()
    token_file = prometheus_dir / "token"
    token_file.write_text(METRICS_TOKEN_FOR_SCRAPES)
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(ALERTS)],
        "scrape_configs": [
            {
                "job_name": "igsync",
                "authorization": {"type": "Bearer", "credentials_file": str(token_file)},
                "static_configs": [{"targets": [f"127.0.0.1:{monitored.port}"]}],
            }
        ],
    }
    (prometheus_dir / "prometheus.yml").write_text(json.dumps(config))  # JSON is YAML
    port = free_port()
    output = open(prometheus_dir / "prometheus.log", "ab")  # read by the session's log audit
    process = subprocess.Popen(
        [
            prometheus_binary(),
            f"--config.file={prometheus_dir / 'prometheus.yml'}",
            f"--storage.tsdb.path={prometheus_dir / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--storage.tsdb.retention.time=1h",
        ],
        stdout=output,
        stderr=subprocess.STDOUT,
    )
    client = Client(f"http://127.0.0.1:{port}")
    try:
        yield Prometheus(process, client)
    finally:
        client.close()
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        output.close()


async def test_prometheus_sees_what_a_burst_of_webhooks_produced(
    monitored: RunningServer, prometheus: Prometheus
) -> None:
    igsync = monitored.client
    tenant = await connect_tenant(igsync)

    async def prometheus_ready() -> bool:
        if prometheus.process.poll() is not None:
            raise AssertionError("prometheus exited; see prometheus.log in the test's temp dir")
        try:
            return (await prometheus.client.get("/-/ready", timeout=2)).code == 200
        except OSError:
            return False

    await wait_for(prometheus_ready, timeout=30, interval=0.1)
    # The scrape works with the bearer token (a 401 would make `up` 0).
    await wait_for(lambda: prometheus.scalar('up{job="igsync"}'), timeout=30, interval=0.2)
    assert await prometheus.scalar('up{job="igsync"}') == 1

    # An inbox on a WebSocket, so that delivery latency is measured where it is promised.
    inbox = await WsClient.connect(monitored.base_url, tenant.token)
    await inbox.subscribe(channel_id=tenant.channel["id"])

    # The burst: 12 new customer messages, 4 of them redelivered by Meta (layer "mid"),
    # 3 posts with a forged signature, 1 body that is not JSON.
    new, redelivered, forged = 12, 4, 3
    bodies = [messaging_body(text_item(f"m.prom.{i}", f"message {i}")) for i in range(new)]
    client_seconds = []
    post_to_inbox_seconds = []
    for body in bodies:
        started = time.perf_counter()
        response = await igsync.webhook(body)
        assert response.code == 200
        client_seconds.append(response.request_time)
        assert len(await inbox.events(3)) == 3  # chat_message, new_customer_message, conversation_updated
        post_to_inbox_seconds.append(time.perf_counter() - started)
    for body in bodies[:redelivered]:
        response = await igsync.webhook(body)
        assert response.code == 200
        client_seconds.append(response.request_time)
    assert await inbox.quiet() == []  # redeliveries publish nothing
    inbox.close()
    for body in bodies[:forged]:
        assert (await igsync.webhook(body, signature="sha256=" + "f" * 64)).code == 401
    assert (await igsync.webhook(b"{not json")).code == 400
    total = new + redelivered + forged + 1
    # What igsync itself now says, to compare with what Prometheus will have scraped.
    direct = await scrape(igsync, token=METRICS_TOKEN_FOR_SCRAPES)
    assert direct.value("igsync_webhook_duration_seconds_count") == total

    # Wait until Prometheus has scraped igsync after the burst.
    async def scraped_after_burst() -> bool:
        return await prometheus.scalar('sum(igsync_webhook_duration_seconds_count{job="igsync"})') == total

    await wait_for(scraped_after_burst, timeout=30, interval=0.2)

    # "Are we storing duplicates?" — the redeliveries were caught, by the mid layer only.
    layers = await prometheus.by_label("sum by (layer) (igsync_duplicates_total)", "layer")
    assert layers == {"mid": redelivered, "cache": 0, "database": 0, "adopted": 0}
    outcomes = await prometheus.by_label("sum by (outcome) (igsync_webhook_requests_total)", "outcome")
    assert outcomes["processed"] == new + redelivered
    assert outcomes["invalid_signature"] == forged
    assert outcomes["bad_request"] == 1
    assert outcomes["store_error"] == 0
    kinds = await prometheus.by_label('sum by (direction) (igsync_webhook_events_total{kind="message"})', "direction")
    assert kinds["customer_to_owner"] == new + redelivered

    # Latency quantiles over the burst. The server's own time per webhook is within the
    # client's round trip, so p99 lies below the bucket bound above the slowest round trip.
    p99 = await prometheus.scalar("histogram_quantile(0.99, sum by (le) (igsync_webhook_duration_seconds_bucket))")
    p50 = await prometheus.scalar("histogram_quantile(0.5, sum by (le) (igsync_webhook_duration_seconds_bucket))")
    assert p50 is not None and p99 is not None
    assert 0 < p50 <= p99
    assert p99 <= bucket_bound_above(WEBHOOK_DURATION_BUCKETS, max(client_seconds))
    # The same quantile computed from igsync's own buckets agrees (Prometheus stored them as scraped).
    assert math.isclose(p99, local_quantile(direct, "igsync_webhook_duration_seconds", 0.99), rel_tol=1e-9)

    # "How late are messages reaching the inbox?" — one delivery per event per socket, and a
    # p99 no later than the slowest POST → third event seen by the client.
    assert await prometheus.scalar("sum(igsync_event_delivery_seconds_count)") == new * 3
    delivery_p99 = await prometheus.scalar(
        "histogram_quantile(0.99, sum by (le) (igsync_event_delivery_seconds_bucket))"
    )
    assert delivery_p99 is not None and 0 < delivery_p99
    assert delivery_p99 <= bucket_bound_above(DELIVERY_BUCKETS, max(post_to_inbox_seconds))
    assert math.isclose(delivery_p99, local_quantile(direct, "igsync_event_delivery_seconds", 0.99), rel_tol=1e-9)

    # Request metrics from the log_function: the webhook handler's POSTs by status class.
    statuses = await prometheus.by_label(
        'sum by (status) (igsync_http_requests_total{handler="InstagramWebhookHandler", method="POST"})', "status"
    )
    assert statuses == {"2xx": new + redelivered, "4xx": forged + 1, "5xx": 0}

    # Every dashboard query is valid PromQL over these series.
    for expr in dashboard_exprs():
        await prometheus.query(expr.replace("$job", "igsync").replace("$__rate_interval", "1m"))

    # The alert rules load and evaluate without error against real igsync series.
    async def rules_evaluated() -> list[dict[str, Any]]:
        body = body_of(await prometheus.client.get("/api/v1/rules"))
        rules = [r for g in body["data"]["groups"] for r in g["rules"]]
        return (
            rules
            if rules and all(r.get("lastEvaluation", "").startswith("2") and r["health"] != "unknown" for r in rules)
            else []
        )

    rules = await wait_for(rules_evaluated, timeout=30, interval=0.2)
    assert {r["name"]: r["health"] for r in rules} == {r["name"]: "ok" for r in rules}
    # Nothing is on fire after a healthy burst (the forged signatures are too few to count).
    firing = [r["name"] for r in rules if r["state"] == "firing"]
    assert firing == []
    assert tenant.token  # the tenant's channel received the burst


def bucket_bound_above(buckets: tuple[float, ...], seconds: float) -> float:
    """The upper bound of the bucket an observation of ``seconds`` falls in."""
    return min((b for b in buckets if b >= seconds), default=math.inf)


def local_quantile(scrape_result: Any, name: str, q: float) -> float:
    """``histogram_quantile`` as Prometheus computes it, from one scrape's cumulative buckets."""
    buckets = sorted(
        (float("inf") if dict(labels)["le"] == "+Inf" else float(dict(labels)["le"]), value)
        for labels, value in scrape_result.series(name + "_bucket").items()
    )
    total = buckets[-1][1]
    rank = q * total
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return lower_bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (count - lower_count)
        lower_bound, lower_count = bound, count
    raise AssertionError("no bucket holds the rank")
