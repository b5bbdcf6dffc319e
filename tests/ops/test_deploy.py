"""The operator's files: the Grafana dashboard and the Prometheus rules, checked against
what a real igsync exports (and, for the rules, by promtool itself)."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
from asyncio.subprocess import PIPE
from typing import Any

import yaml

from tests.support.helpers import ROOT
from tests.support.observability import scrape
from tests.support.server import RunningServer

DASHBOARD = ROOT / "deploy" / "grafana" / "igsync.json"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
ALERTS_TEST = ROOT / "deploy" / "prometheus" / "alerts_test.yml"
PROMETHEUS_CONFIG = ROOT / "deploy" / "prometheus" / "prometheus.yml"
OPERATIONS_DOC = ROOT / "docs" / "operations.md"

# PromQL words that look like metric names but are not.
PROMQL_KEYWORDS = {
    "and",
    "or",
    "unless",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "offset",
    "bool",
    "inf",
    "nan",
    "atan2",
}
# Metrics Prometheus itself attaches to every target.
PROMETHEUS_SERIES = {"up", "scrape_duration_seconds", "scrape_samples_scraped"}


def promtool() -> str:
    found = shutil.which("promtool")
    assert found, "promtool is missing: run `make system-deps` (Debian package prometheus)"
    return found


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads (functions, labels, keywords removed)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # range selectors
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = re.sub(r"\$\{?\w+\}?", " ", text)  # Grafana variables
    names = set()
    for match in re.finditer(r"(?<![\w.])([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?", text):
        name, is_call = match.group(1), match.group(2)
        if is_call or name.lower() in PROMQL_KEYWORDS:
            continue
        names.add(name)
    return names


def dashboard_panels() -> list[dict[str, Any]]:
    dashboard = json.loads(DASHBOARD.read_text())
    panels = []
    for panel in dashboard["panels"]:
        panels.append(panel)
        panels.extend(panel.get("panels", []))
    return panels


def dashboard_exprs() -> list[str]:
    return [t["expr"] for p in dashboard_panels() for t in p.get("targets", [])]


def alert_rules() -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]]


def test_metric_names_extraction() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (le, command) (rate(igsync_x_seconds_bucket{job=~"$job", a="b c"}'
        "[$__rate_interval]))) > 1e3 and on (instance) max(igsync_ready) offset 5m or vector(0) * bool up"
    )
    assert metric_names(expr) == {"igsync_x_seconds_bucket", "igsync_ready", "up"}
    assert metric_names("sum(rate(igsync_typo_total[5m]))") == {"igsync_typo_total"}


def test_dashboard_structure() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["title"] == "igsync"
    assert isinstance(dashboard["schemaVersion"], int)
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    assert "job" in variables
    panels = dashboard_panels()
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    occupied: set[tuple[int, int]] = set()
    for panel in panels:
        grid = panel["gridPos"]
        assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 24, panel["title"]
        cells = {
            (x, y) for x in range(grid["x"], grid["x"] + grid["w"]) for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not cells & occupied, f"panel {panel['title']!r} overlaps another"
        occupied |= cells
        if panel["type"] == "row":
            continue
        assert panel["title"], panel
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        targets = panel["targets"]
        assert targets, panel["title"]
        ref_ids = [t["refId"] for t in targets]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]
        for target in targets:
            assert target["expr"].strip(), panel["title"]
            assert 'job=~"$job"' in target["expr"], f"{panel['title']}: every query follows the job variable"


def test_dashboard_answers_the_operator_questions() -> None:
    """Webhooks/s by outcome, duplicates by layer, webhook p50/p99, delivery p99, sockets, store errors."""
    exprs = dashboard_exprs()

    def has(*needles: str) -> bool:
        return any(all(n in e for n in needles) for e in exprs)

    assert has("sum by (outcome)", "igsync_webhook_requests_total")
    assert has("sum by (layer)", "igsync_duplicates_total")
    assert has("histogram_quantile(0.5,", "igsync_webhook_duration_seconds_bucket")
    assert has("histogram_quantile(0.99,", "igsync_webhook_duration_seconds_bucket")
    assert has("histogram_quantile(0.99,", "igsync_event_delivery_seconds_bucket")
    assert has("igsync_ws_connections")
    assert has("igsync_store_errors_total")
    assert has("igsync_channels_silent")
    assert has("igsync_duplicates_stored")


async def test_dashboard_and_alerts_read_only_metrics_the_server_exports(server: RunningServer) -> None:
    exported = (await scrape(server.client)).names()
    for expr in dashboard_exprs():
        unknown = metric_names(expr) - exported
        assert not unknown, f"dashboard query reads metrics igsync does not export: {unknown} in {expr}"
    for rule in alert_rules():
        unknown = metric_names(rule["expr"]) - exported - PROMETHEUS_SERIES
        assert not unknown, f"alert {rule['alert']} reads metrics igsync does not export: {unknown}"


def test_alerts_cover_what_an_operator_must_hear_about() -> None:
    rules = {rule["alert"]: rule for rule in alert_rules()}
    required = {
        "IgsyncSignatureFailuresRising": "invalid_signature",
        "IgsyncChannelSilent": "igsync_channels_silent",
        "IgsyncNoWebhooks": "igsync_channels_silent",
        "IgsyncDuplicatesStored": "igsync_duplicates_stored",
        "IgsyncDeliveryLatencyHigh": "igsync_event_delivery_seconds_bucket",
        "IgsyncStoreErrors": "igsync_store_errors_total",
        "IgsyncNotReady": "igsync_ready",
    }
    for name, needle in required.items():
        assert needle in rules[name]["expr"], name
    assert "> 1" in rules["IgsyncDeliveryLatencyHigh"]["expr"]  # "delivery p99 over 1 s"
    doc = OPERATIONS_DOC.read_text()
    anchors = {
        re.sub(r"[^a-z0-9 -]", "", h.lower()).strip().replace(" ", "-") for h in re.findall(r"^#+ (.+)$", doc, re.M)
    }
    for name, rule in rules.items():
        assert rule["labels"]["severity"] in ("warning", "critical"), name
        runbook = rule["annotations"]["runbook"]
        assert runbook.startswith("docs/operations.md#"), name
        assert runbook.split("#", 1)[1] in anchors, f"{name}: docs/operations.md has no section {runbook}"


def test_promtool_checks_and_unit_tests_the_rules() -> None:
    tool = promtool()
    for args in (
        ["check", "rules", str(ALERTS)],
        ["test", "rules", str(ALERTS_TEST)],
        ["check", "config", str(PROMETHEUS_CONFIG)],
    ):
        result = subprocess.run([tool, *args], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, f"promtool {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
    # Every alert has at least one unit test.
    tested = {
        case["alertname"]
        for test in yaml.safe_load(ALERTS_TEST.read_text())["tests"]
        for case in test["alert_rule_test"]
    }
    assert tested == {rule["alert"] for rule in alert_rules()}


async def test_metrics_output_passes_promtool_lint(server: RunningServer) -> None:
    response = await server.client.get("/metrics")
    lint = await asyncio.create_subprocess_exec(promtool(), "check", "metrics", stdin=PIPE, stdout=PIPE, stderr=PIPE)
    out, err = await asyncio.wait_for(lint.communicate(response.body), 60)
    assert lint.returncode == 0, out.decode() + err.decode()


def test_operations_doc_describes_every_metric() -> None:
    """docs/operations.md describes every metric of API.md §5 and every operations metric; a
    metric another capability adds may be described in that capability's docs page."""
    from server.ops.metrics import Metrics
    from tests.ops.test_metrics import DOCUMENTED, EVENTS, OPERATIONS

    operations = OPERATIONS_DOC.read_text()
    for name in (*DOCUMENTED, *OPERATIONS, *EVENTS):
        assert f"`{name}`" in operations, f"docs/operations.md does not describe {name}"
    docs = "\n".join(p.read_text() for p in sorted((ROOT / "docs").glob("*.md")))
    for family in {m.name for m in Metrics(process_metrics=False).registry.collect()}:
        assert f"`{family}" in docs, f"no page in docs/ describes {family}"
