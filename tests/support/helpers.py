"""Test helpers: signing, fixture bodies, a real HTTP client, and igsync server processes."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
from tornado.httpclient import AsyncHTTPClient, HTTPRequest, HTTPResponse

from config import Settings
from tests.support.log_audit import AUDIT

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "instagram"

# Test-only secrets. Tests also assert that none of them ever reaches a log line.
APP_SECRET = "test-app-secret-0123456789abcdef"
VERIFY_TOKEN = "test-verify-token-0123456789"
ADMIN_TOKEN = "test-admin-token-0123456789abcdef"
INTERNAL_TOKEN = "test-internal-token-0123456789abc"
METRICS_TOKEN = "test-metrics-token-0123456789ab"
ALL_SECRETS = (APP_SECRET, VERIFY_TOKEN, ADMIN_TOKEN, INTERNAL_TOKEN, METRICS_TOKEN)

ACCOUNT_ID = "17841400000000001"
CUSTOMER_A = "6200000000000101"
CUSTOMER_B = "6200000000000102"


def sign(body: bytes, secret: str = APP_SECRET) -> str:
    signature = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    AUDIT.note_signature(signature)  # the session's log audit looks for it in every log line
    return signature


def fixture_bytes(name: str) -> bytes:
    return (FIXTURES / (name if name.endswith(".json") else name + ".json")).read_bytes()


def fixture_json(name: str) -> dict[str, Any]:
    return json.loads(fixture_bytes(name))


def messaging_body(*items: dict[str, Any], account_id: str = ACCOUNT_ID) -> bytes:
    """A webhook body with the given messaging items in one entry."""
    return orjson.dumps(
        {
            "object": "instagram",
            "entry": [{"id": account_id, "time": int(time.time() * 1000), "messaging": list(items)}],
        }
    )


def text_item(
    mid: str,
    text: str,
    *,
    sender: str = CUSTOMER_A,
    recipient: str = ACCOUNT_ID,
    echo: bool = False,
    timestamp_ms: int | None = None,
) -> dict[str, Any]:
    message: dict[str, Any] = {"mid": mid, "text": text}
    if echo:
        message["is_echo"] = True
    return {
        "sender": {"id": sender},
        "recipient": {"id": recipient},
        "timestamp": timestamp_ms if timestamp_ms is not None else int(time.time() * 1000),
        "message": message,
    }


def echo_item(
    mid: str, text: str, *, customer: str = CUSTOMER_A, account_id: str = ACCOUNT_ID, timestamp_ms: int | None = None
) -> dict[str, Any]:
    return text_item(mid, text, sender=account_id, recipient=customer, echo=True, timestamp_ms=timestamp_ms)


class Client:
    """Real HTTP against a running igsync (in-process or another process)."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url.rstrip("/")
        self.http = AsyncHTTPClient(force_instance=True)

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        raw: bytes | None = None,
        token: str | None = None,
        headers: dict[str, str] | None = None,
        timeout: float = 30,
    ) -> HTTPResponse:
        all_headers = dict(headers or {})
        if token is not None:
            all_headers["Authorization"] = f"Bearer {token}"
        data = raw if raw is not None else (orjson.dumps(body) if body is not None else None)
        if data is not None:
            all_headers.setdefault("Content-Type", "application/json")
        if data is None and method in ("POST", "PUT", "PATCH"):
            data = b""
        request = HTTPRequest(
            self.base_url + path,
            method=method,
            body=data,
            headers=all_headers,
            request_timeout=timeout,
            allow_nonstandard_methods=True,
        )
        response = await self.http.fetch(request, raise_error=False)
        _note_issued_token(response)
        return response

    async def get(self, path: str, **kw: Any) -> HTTPResponse:
        return await self.request("GET", path, **kw)

    async def post(self, path: str, body: Any = None, **kw: Any) -> HTTPResponse:
        return await self.request("POST", path, body=body, **kw)

    async def webhook(self, body: bytes, *, signature: str | None = "auto", timeout: float = 30) -> HTTPResponse:
        headers = {"Content-Type": "application/json"}
        if signature == "auto":
            signature = sign(body)
        if signature is not None:
            headers["X-Hub-Signature-256"] = signature
        return await self.request("POST", "/webhooks/instagram", raw=body, headers=headers, timeout=timeout)

    async def webhook_fixture(self, name: str) -> HTTPResponse:
        return await self.webhook(fixture_bytes(name))

    def close(self) -> None:
        self.http.close()


def _note_issued_token(response: HTTPResponse) -> None:
    """Inbox tokens issued over HTTP (``POST /api/v1/tokens``) join the session's log audit."""
    if response.code == 201 and response.body and b'"token"' in response.body:
        token = orjson.loads(response.body).get("token")
        if isinstance(token, str):
            AUDIT.note_token(token)


def body_of(response: HTTPResponse) -> Any:
    return orjson.loads(response.body) if response.body else None


def server_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment that makes ``igsync serve`` use exactly these settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("IGSYNC_")}
    env.update(
        {
            "IGSYNC_HOST": settings.host,
            "IGSYNC_PORT": str(settings.port),
            "IGSYNC_MONGO_URL": settings.mongo_url or "",
            "IGSYNC_MONGO_DB": settings.mongo_db,
            "IGSYNC_REDIS_URL": settings.redis_url or "",
            "IGSYNC_REDIS_CLUSTER": "true" if settings.redis_cluster else "false",
            "IGSYNC_REDIS_SENTINELS": ",".join(settings.redis_sentinels),
            "IGSYNC_REDIS_SENTINEL_MASTER": settings.redis_sentinel_master,
            "IGSYNC_DATA_DIR": settings.data_dir,
            "IGSYNC_APP_SECRET": settings.app_secret or "",
            "IGSYNC_VERIFY_TOKEN": settings.verify_token or "",
            "IGSYNC_ADMIN_TOKEN": settings.admin_token or "",
            "IGSYNC_INTERNAL_TOKENS": ",".join(settings.internal_tokens),
            "IGSYNC_STORE_TIMEOUT_MS": str(settings.store_timeout_ms),
            "IGSYNC_CHANNEL_CACHE_SECS": str(settings.channel_cache_secs),
            "IGSYNC_DEDUP_TTL_SECS": str(settings.dedup_ttl_secs),
            "IGSYNC_DEDUP_WINDOW_SECS": str(settings.dedup_window_secs),
            "IGSYNC_GRAPH_API_URL": settings.graph_api_url,
            "IGSYNC_FACEBOOK_GRAPH_API_URL": settings.facebook_graph_api_url,
            "IGSYNC_TOKEN_CHECK_SECS": str(settings.token_check_secs),
            "IGSYNC_HISTORY_CALLS_PER_SEC": str(settings.history_calls_per_sec),
            "IGSYNC_HISTORY_LEASE_SECS": str(settings.history_lease_secs),
            "IGSYNC_HISTORY_CONCURRENCY": str(settings.history_concurrency),
            "IGSYNC_HEARTBEAT_SECS": str(settings.heartbeat_secs),
            "IGSYNC_META_RETRY_WINDOW_SECS": str(settings.meta_retry_window_secs),
            "IGSYNC_GRAPH_API_TIMEOUT_SECS": str(settings.graph_api_timeout_secs),
            "IGSYNC_SEND_LEASE_SECS": str(settings.send_lease_secs),
            "IGSYNC_SEND_POLL_SECS": str(settings.send_poll_secs),
            "IGSYNC_SEND_RETRY_BASE_SECS": str(settings.send_retry_base_secs),
            "IGSYNC_LOG_FORMAT": settings.log_format,
        }
    )
    env.update(extra)
    return env


class ServerProcessHandle:
    """``python -m server serve`` as a child process, with its output captured to a file."""

    def __init__(self, env: dict[str, str], log_path: Path, args: tuple[str, ...] = ()) -> None:
        self.env = env
        self.args = args
        self.port = int(env["IGSYNC_PORT"])
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        AUDIT.note_output_file(log_path)  # read by the session's log audit at the end

    def start(self, timeout: float = 30) -> ServerProcessHandle:
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "server", "serve", *self.args],
            cwd=ROOT,
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        import urllib.request

        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"igsync exited at start:\n{self.log_path.read_text()}")
            try:
                with urllib.request.urlopen(self.base_url + "/healthz", timeout=1) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"igsync did not start:\n{self.log_path.read_text()}")

    def terminate(self, sig: int = signal.SIGTERM, timeout: float = 15) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        finally:
            self._log.close()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if hasattr(self, "_log"):
            self._log.close()

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")


async def wait_for(predicate: Any, timeout: float = 10.0, interval: float = 0.02) -> Any:
    """Poll an (async) predicate until truthy — for observing background work, never for
    ordering the system under test."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("condition not met within %.1fs" % timeout)
        await asyncio.sleep(interval)
