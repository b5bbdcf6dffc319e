"""Logs an operator can search: one structured line per webhook item, one access line per
request, JSON with ``IGSYNC_LOG_FORMAT=json``, and no token or signature in any of them."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from config import Settings
from server.app.embedded import free_port
from server.ops import logs
from tests.support.helpers import (
    ADMIN_TOKEN,
    ALL_SECRETS,
    APP_SECRET,
    INTERNAL_TOKEN,
    METRICS_TOKEN,
    VERIFY_TOKEN,
    Client,
    ServerProcessHandle,
    echo_item,
    fixture_bytes,
    messaging_body,
    server_env,
    sign,
    text_item,
)
from tests.support.server import RunningServer, Tenant, connect_tenant

ITEM_FIELDS = ("event", "kind", "outcome", "direction", "channel_id", "conversation_id", "mid", "duration_ms")


class Lines(logging.Handler):
    """Formats every record the way ``igsync serve`` would and keeps the lines."""

    def __init__(self, fmt: str) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logs.formatter(fmt, ALL_SECRETS))
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))

    def json(self) -> list[dict]:
        return [orjson.loads(line) for line in self.lines]

    def items(self) -> list[dict]:
        return [line for line in self.json() if line.get("event") == "webhook_item"]


@pytest.fixture
def json_lines() -> Iterator[Lines]:
    handler = Lines("json")
    root = logging.getLogger()
    root.addHandler(handler)
    yield handler
    root.removeHandler(handler)


async def test_json_line_of_each_webhook_item(server: RunningServer, tenant: Tenant, json_lines: Lines) -> None:
    client = server.client
    assert (await client.webhook_fixture("customer_text")).code == 200
    stored = json_lines.items()
    assert len(stored) == 1
    line = stored[0]
    assert set(ITEM_FIELDS) <= set(line), line
    assert line["event"] == "webhook_item"
    assert line["kind"] == "message"
    assert line["outcome"] == "stored"
    assert line["direction"] == "customer_to_owner"
    assert line["channel_id"] == tenant.channel["id"]
    assert line["mid"].startswith("aWdfZAG1faXRlbToxOklHTWVzc2FnZAUlEOjE3ODQxNDAw")
    assert len(line["conversation_id"]) == 24 and len(line["message_id"]) == 24
    assert isinstance(line["duration_ms"], float) and line["duration_ms"] >= 0
    assert "dedup_layer" not in line
    assert line["msg"].startswith("webhook item: stored direction=customer_to_owner")  # the human text stays
    assert line["level"] == "info" and line["logger"] == "igsync.webhook" and line["ts"].endswith("Z")

    json_lines.lines.clear()
    assert (await client.webhook_fixture("customer_text")).code == 200  # Meta redelivers
    (duplicate,) = json_lines.items()
    assert duplicate["outcome"] == "duplicate"
    assert duplicate["dedup_layer"] == "mid"
    assert duplicate["conversation_id"] == line["conversation_id"]
    assert duplicate["message_id"] == line["message_id"]

    json_lines.lines.clear()
    batch = messaging_body(text_item("m.log.1", "one"), echo_item("m.log.2", "two"), {"bogus": True})
    assert (await client.webhook(batch)).code == 200
    items = json_lines.items()
    assert [(i["kind"], i["outcome"], i.get("direction")) for i in items] == [
        ("message", "stored", "customer_to_owner"),
        ("message", "stored", "owner_to_customer"),
        ("invalid", "invalid", None),
    ]
    assert items[2]["reason"] == "invalid_item"

    json_lines.lines.clear()
    assert (await client.webhook_fixture("customer_reaction")).code == 200
    assert (await client.webhook_fixture("changes_test_payload")).code == 200
    assert (await client.webhook(messaging_body(text_item("m.x", "x"), account_id="1999"))).code == 200
    assert [(i["kind"], i["outcome"]) for i in json_lines.items()] == [
        ("reaction", "orphan"),  # about the owner's echo, which this test never stored
        ("test", "acknowledged"),
        ("message", "ignored"),
    ]
    reaction = json_lines.items()[0]
    assert reaction["direction"] == "customer_to_owner" and reaction["channel_id"] == tenant.channel["id"]

    # Once the message exists, an event about it is applied — and still logged exactly once.
    assert (await client.webhook_fixture("owner_echo_text")).code == 200
    json_lines.lines.clear()
    assert (await client.webhook_fixture("customer_reaction")).code == 200
    (applied,) = json_lines.items()
    assert (applied["kind"], applied["outcome"]) == ("reaction", "applied")
    assert len(applied["message_id"]) == 24 and applied["mid"] == reaction["mid"]


async def test_access_log_line(server: RunningServer, tenant: Tenant, json_lines: Lines) -> None:
    client = server.client
    inbox_token = tenant.token
    response = await client.get(f"/api/v1/channels?access_token={inbox_token}&x=1", token=inbox_token)
    assert response.code == 200
    assert (await client.webhook(fixture_bytes("customer_text"), signature="sha256=" + "1" * 64)).code == 401
    assert (await client.get("/healthz")).code == 200
    assert (await client.get("/nowhere")).code == 404
    access = [line for line in json_lines.json() if line.get("event") == "http_request"]
    by_path = {line["path"]: line for line in access}
    channels = by_path["/api/v1/channels"]  # the path, never its query string
    assert channels["status"] == 200 and channels["method"] == "GET" and channels["handler"] == "ChannelsHandler"
    assert channels["level"] == "info" and channels["duration_ms"] >= 0 and channels["remote_ip"] == "127.0.0.1"
    assert by_path["/webhooks/instagram"]["status"] == 401 and by_path["/webhooks/instagram"]["level"] == "warning"
    assert by_path["/healthz"]["level"] == "debug"  # probes do not bury the lines that matter
    assert by_path["/nowhere"]["handler"] == "NotFoundHandler"
    everything = "\n".join(json_lines.lines)
    assert inbox_token not in everything
    assert "access_token" not in everything
    assert "sha256=" not in everything


async def test_text_format_is_for_humans(server: RunningServer, tenant: Tenant) -> None:
    handler = Lines("text")
    logging.getLogger().addHandler(handler)
    try:
        assert (await server.client.webhook_fixture("customer_text")).code == 200
    finally:
        logging.getLogger().removeHandler(handler)
    item = next(line for line in handler.lines if "webhook item:" in line)
    assert " INFO igsync.webhook: webhook item: stored direction=customer_to_owner type=customer" in item
    assert not item.startswith("{")


def test_redactor_removes_secrets_and_credential_shapes() -> None:
    redact = logs.Redactor([APP_SECRET, VERIFY_TOKEN, None, ""])
    signature = sign(b"{}")
    samples = {
        f"secret {APP_SECRET} here": f"secret {logs.REDACTED} here",
        f"verify={VERIFY_TOKEN}": f"verify={logs.REDACTED}",
        "Authorization: Bearer abc.def-ghi": f"Authorization: Bearer {logs.REDACTED}",
        f"header {signature}": f"header sha256={logs.REDACTED}",
        "token igs_" + "A" * 43 + " used": f"token {logs.REDACTED} used",
        f"admin {'adm_' + 'b' * 40}": f"admin {logs.REDACTED}",
        "GET /ws?access_token=igs_xyz&x=1": f"GET /ws?access_token={logs.REDACTED}&x=1",
        "hub.verify_token=abc": f"hub.verify_token={logs.REDACTED}",
    }
    for line, expected in samples.items():
        assert redact(line) == expected
    # Ordinary lines are left alone: ids, mids, md5 content hashes, words like "token".
    plain = (
        "webhook item: stored mid=aWdfZAG1 conversation=6b06b0723e735f6b761d86a6 "
        "hash=0cc175b9c0f1b6a831c399e269772661 token required"
    )
    assert redact(plain) == plain


def test_json_output_is_redacted_too() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.formatter("json", [ADMIN_TOKEN, INTERNAL_TOKEN]))
    log = logging.getLogger("igsync.test.redaction")
    log.addHandler(handler)
    log.propagate = False
    try:
        log.warning("leaked %s", ADMIN_TOKEN, extra={"path": f"/x/{INTERNAL_TOKEN}", "event": "test"})
    finally:
        log.removeHandler(handler)
        log.propagate = True
    out = stream.getvalue()
    line = orjson.loads(out)
    assert line["msg"] == f"leaked {logs.REDACTED}"
    assert ADMIN_TOKEN not in out and INTERNAL_TOKEN not in out  # the structured fields too
    assert line["path"] == f"/x/{logs.REDACTED}"
    assert line["event"] == "test"


def test_configure_replaces_only_its_own_handler() -> None:
    root = logging.getLogger()
    foreign = logging.NullHandler()
    root.addHandler(foreign)
    level = root.level
    try:
        logs.configure("json", "INFO", stream=io.StringIO())
        logs.configure("text", "INFO", stream=io.StringIO())
        ours = [h for h in root.handlers if h.get_name() == logs.HANDLER_NAME]
        assert len(ours) == 1
        assert foreign in root.handlers  # e.g. the test session's log capture survives
    finally:
        for handler in [h for h in root.handlers if h.get_name() == logs.HANDLER_NAME]:
            root.removeHandler(handler)
        root.removeHandler(foreign)
        root.setLevel(level)


@pytest.mark.slow
async def test_json_logs_of_a_server_process(settings: Settings, tmp_path: Path) -> None:
    """``igsync serve`` with IGSYNC_LOG_FORMAT=json: every log line on stderr is one JSON object."""
    port = free_port()
    env = server_env(settings.replace(port=port, log_format="json"), IGSYNC_METRICS_TOKEN=METRICS_TOKEN)
    handle = ServerProcessHandle(env, tmp_path / "igsync-json.log").start()
    client = Client(handle.base_url)
    try:
        tenant = await connect_tenant(client)
        assert (await client.webhook_fixture("customer_text")).code == 200
        assert (await client.webhook_fixture("customer_text")).code == 200
        response = await client.get(f"/api/v1/channels?access_token={tenant.token}", token=tenant.token)
        assert response.code == 200
        assert (await client.get("/metrics", token=METRICS_TOKEN)).code == 200
        assert (await client.get("/metrics", token="wrong-token-0123456789")).code == 401
    finally:
        client.close()
        assert handle.terminate() == 0
    output = handle.output()
    records = []
    for line in output.splitlines():
        if line.startswith("{"):
            records.append(orjson.loads(line))  # every log line parses
        else:
            # Only the start-up banner is plain text (stdout, for a person).
            assert line.startswith(("igsync listening on", "  ")), line
    items = [r for r in records if r.get("event") == "webhook_item"]
    assert [(i["outcome"], i.get("dedup_layer")) for i in items] == [("stored", None), ("duplicate", "mid")]
    assert all(set(ITEM_FIELDS) <= set(i) for i in items)
    paths = {(r["path"], r["status"]) for r in records if r.get("event") == "http_request"}
    assert ("/api/v1/channels", 200) in paths
    assert ("/metrics", 401) in paths
    for secret in (*ALL_SECRETS, tenant.token):
        assert secret not in output
    assert "access_token" not in output
