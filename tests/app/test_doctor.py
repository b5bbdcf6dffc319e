"""``igsync doctor`` against real stores and a real ``igsync serve`` process.

The CLI runs as a child process with the same environment as the server (what an operator
does), so exit codes, ``--json`` and the text lines are what a person sees. Narrower checks
(index drift, token state, the trigger outbox) run the :class:`server.app.doctor.Doctor` in-process.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from bson import ObjectId

from config import Settings
from models.store import Store
from models.timeutil import utcnow
from server.app import doctor as doc
from server.app.embedded import EmbeddedStores, free_port
from tests.support.helpers import (
    ALL_SECRETS,
    ROOT,
    ServerProcessHandle,
    body_of,
    fixture_bytes,
    server_env,
    sign,
)
from tests.support.redis_topologies import TOPOLOGIES
from tests.support.server import RunningServer, connect_tenant, make_settings

OTHER_SECRET = "another-app-secret-fedcba9876543210"


def run_doctor(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "server", "doctor", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def by_name(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {check["name"]: check for check in report["checks"]}


async def residue(store_settings: Settings) -> list[str]:
    """Anything the doctor's test webhooks left behind, in any collection."""
    store = Store(store_settings.mongo_url or "", store_settings.mongo_db)
    found = []
    try:
        for name in await store.db.list_collection_names():
            coll = store.db[name]
            async for row in coll.find({}):
                text = json.dumps(row, default=str)
                if "igsync-doctor" in text or "doctor_test" in text or f'"{doc.DOCTOR_ACCOUNT_PREFIX}' in text:
                    found.append(f"{name}: {text[:200]}")
    finally:
        await store.close()
    return found


@pytest.fixture
def process_settings(stores: EmbeddedStores, tmp_path: Path) -> Settings:
    return make_settings(stores, tmp_path, port=free_port())


@pytest.fixture
def serve(process_settings: Settings, tmp_path: Path) -> Iterator[ServerProcessHandle]:
    handle = ServerProcessHandle(server_env(process_settings), tmp_path / "serve.log").start()
    yield handle
    handle.kill()


async def connect_and_receive(base_url: str) -> Any:
    """A connected channel that has received a webhook: the state of a working installation."""
    from tests.support.helpers import Client

    client = Client(base_url)
    try:
        tenant = await connect_tenant(client)
        response = await client.webhook_fixture("customer_text")
        assert response.code == 200, response.body
        return tenant
    finally:
        client.close()


async def test_doctor_on_a_healthy_server_passes_every_check(
    serve: ServerProcessHandle, process_settings: Settings
) -> None:
    tenant = await connect_and_receive(serve.base_url)
    env = server_env(process_settings)

    result = run_doctor(env, "--json")

    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    checks = by_name(report)
    assert report["ok"] is True
    assert list(checks) == [
        "config",
        "mongodb",
        "redis",
        "indexes",
        "channels",
        "subscriptions",
        "pubsub",
        "pipeline",
        "trigger_outbox",
        "media",
        "server",
        "webhook_signatures",
    ]
    statuses = {name: c["status"] for name, c in checks.items()}
    # Triggers are not in use and no attachment came yet: those checks are skipped cleanly, all
    # others pass.
    assert statuses == {**{name: "pass" for name in checks}, "trigger_outbox": "skip", "media": "skip"}, result.stdout
    assert checks["mongodb"]["details"]["version"]
    assert checks["redis"]["details"]["version"]
    (channel,) = checks["channels"]["details"]["channels"]
    assert channel["page_id"] == tenant.channel["page_id"]
    assert channel["last_webhook_at"] is not None
    assert channel["messages_last_hour"] == 1
    assert checks["pipeline"]["details"]["duplicate_layer"] == "mid"
    assert checks["pipeline"]["details"]["removed"]["messages"] == 1
    assert checks["pipeline"]["details"]["removed"]["channels"] == 1
    assert checks["webhook_signatures"]["details"] == {"refused_signature": 0, "accepted": 1}
    assert await residue(process_settings) == []
    for secret in (*ALL_SECRETS, tenant.token):
        assert secret not in result.stdout + result.stderr

    text = run_doctor(env)
    assert text.returncode == 0, text.stdout + text.stderr
    lines = text.stdout.splitlines()
    assert any(line.startswith("PASS  mongodb") for line in lines)
    assert any(f"@shop page_id={tenant.channel['page_id']}: last webhook" in line for line in lines)
    assert lines[-1].startswith("Summary: 10 pass, 0 fail, 0 warn, 2 skip")


async def test_doctor_with_redis_stopped_fails_the_redis_line(tmp_path: Path, stores: EmbeddedStores) -> None:
    own_redis = EmbeddedStores(tmp_path / "redis", mongo=False, lock=False).start()
    try:
        settings = make_settings(stores, tmp_path, port=free_port(), redis_url=own_redis.redis_url)
        handle = ServerProcessHandle(server_env(settings), tmp_path / "serve.log").start()
        try:
            await connect_and_receive(handle.base_url)
            own_redis.stop_redis()

            result = run_doctor(server_env(settings), "--json", "--timeout", "2")
        finally:
            handle.kill()
    finally:
        own_redis.stop()

    assert result.returncode == 1, result.stdout + result.stderr
    checks = by_name(json.loads(result.stdout))
    assert checks["redis"]["status"] == "fail"
    assert "IGSYNC_REDIS_URL" in checks["redis"]["advice"]
    assert checks["pubsub"]["status"] == "skip"
    # MongoDB still works, and so does everything that needs only MongoDB.
    for name in ("mongodb", "indexes", "channels", "pipeline"):
        assert checks[name]["status"] == "pass", checks[name]
    # The server agrees: it is not ready without Redis.
    assert checks["server"]["status"] == "fail"
    assert "/readyz answers 503" in checks["server"]["summary"]


async def test_doctor_sees_meta_webhooks_refused_for_a_wrong_app_secret(
    serve: ServerProcessHandle, process_settings: Settings
) -> None:
    await connect_and_receive(serve.base_url)
    # Meta signs with its app's secret; the server was configured with another one.
    from tests.support.helpers import Client

    client = Client(serve.base_url)
    try:
        body = fixture_bytes("customer_story_reply")
        for _ in range(2):
            response = await client.webhook(body, signature=sign(body, OTHER_SECRET))
            assert response.code == 401
    finally:
        client.close()

    result = run_doctor(server_env(process_settings), "--json")

    assert result.returncode == 1, result.stdout
    checks = by_name(json.loads(result.stdout))
    signatures = checks["webhook_signatures"]
    # One webhook was accepted before the secret went wrong; the refusals (Meta retries) outnumber it.
    assert signatures["status"] == "fail"
    assert signatures["details"] == {"refused_signature": 2, "accepted": 1}
    assert "App Secret" in signatures["advice"]


async def test_doctor_fails_when_every_webhook_is_refused(tmp_path: Path, stores: EmbeddedStores) -> None:
    settings = make_settings(stores, tmp_path, port=free_port())
    handle = ServerProcessHandle(server_env(settings), tmp_path / "serve.log").start()
    try:
        from tests.support.helpers import Client

        client = Client(handle.base_url)
        body = fixture_bytes("customer_text")
        assert (await client.webhook(body, signature=sign(body, OTHER_SECRET))).code == 401
        client.close()
        result = run_doctor(server_env(settings), "--json")
    finally:
        handle.kill()
    assert result.returncode == 1
    checks = by_name(json.loads(result.stdout))
    assert checks["webhook_signatures"]["status"] == "fail"
    assert "refused for their signature" in checks["webhook_signatures"]["summary"]


async def test_doctor_with_another_secret_than_the_server_fails_the_server_line(
    serve: ServerProcessHandle, process_settings: Settings
) -> None:
    await connect_and_receive(serve.base_url)
    env = server_env(process_settings, IGSYNC_APP_SECRET=OTHER_SECRET)

    result = run_doctor(env)

    assert result.returncode == 1, result.stdout
    lines = result.stdout.splitlines()
    server_line = next(i for i, line in enumerate(lines) if line.startswith("FAIL  server"))
    assert "different app secret" in lines[server_line]
    assert lines[server_line + 1].strip().startswith("→ Give the server and this command the same IGSYNC_* settings")
    assert OTHER_SECRET not in result.stdout


async def test_doctor_reports_a_placeholder_secret_instead_of_refusing_to_run(
    stores: EmbeddedStores, tmp_path: Path
) -> None:
    settings = make_settings(stores, tmp_path)
    env = server_env(settings, IGSYNC_APP_SECRET="changeme")

    result = run_doctor(env, "--no-server", "--json")

    assert result.returncode == 1, result.stdout + result.stderr
    checks = by_name(json.loads(result.stdout))
    assert checks["config"]["status"] == "fail"
    assert "IGSYNC_APP_SECRET looks like a placeholder" in checks["config"]["summary"]
    assert "App Secret" in checks["config"]["advice"]
    assert checks["mongodb"]["status"] == "pass"  # the other checks still ran
    assert "changeme" not in result.stdout


async def test_doctor_without_a_running_server_says_so(stores: EmbeddedStores, tmp_path: Path) -> None:
    settings = make_settings(stores, tmp_path, port=free_port())
    result = run_doctor(server_env(settings), "--json", "--timeout", "2")
    assert result.returncode == 1
    checks = by_name(json.loads(result.stdout))
    assert checks["server"]["status"] == "fail"
    assert "igsync serve" in checks["server"]["advice"]
    assert checks["webhook_signatures"]["status"] == "skip"


# -- in-process checks -------------------------------------------------------------------------


async def run_checks(settings: Settings) -> dict[str, doc.CheckResult]:
    results = await doc.Doctor(settings, server_url=None, timeout_secs=5).run()
    return {r.name: r for r in results}


async def test_index_plan_is_what_start_up_creates(server: RunningServer) -> None:
    store = server.core.store
    planned = await doc.diagnostics.planned_indexes(store)
    created = set()
    for repo in store.repositories:
        for name in await repo.coll.index_information():
            if name != "_id_":
                created.add((repo.coll.name, name))
    assert {(p.collection, p.name) for p in planned} == created
    assert await doc.diagnostics.index_problems(store, planned) == []


async def test_a_missing_index_fails_with_its_name(server: RunningServer) -> None:
    await connect_tenant(server.client)
    await server.core.store.messages.coll.drop_index("channel_conversation_time")

    checks = await run_checks(server.core.settings)

    assert checks["indexes"].status == "fail"
    summary = checks["indexes"].summary
    assert "missing messages.channel_conversation_time (channel_id, conversation_id, sent_at, _id)" in summary
    assert "Restart igsync" in checks["indexes"].advice


async def test_no_connected_channel_fails_with_the_command_to_connect_one(server: RunningServer) -> None:
    checks = await run_checks(server.core.settings)
    assert checks["channels"].status == "fail"
    assert "igsync channel add" in checks["channels"].advice


async def test_channel_token_state_and_unknown_accounts(server: RunningServer) -> None:
    tenant = await connect_tenant(server.client)
    store = server.core.store
    channel_id = ObjectId(tenant.channel["id"])
    # Webhooks arrive for an account that no channel has (e.g. the Instagram user id, not the page id).
    stray = fixture_bytes("customer_text").replace(b"17841400000000001", b"17841499999999999")
    assert body_of(await server.client.webhook(stray))["status"] == "ignored"
    await server.core.audit.flush()  # the server writes its audit copies after answering

    await store.channels.set_fields(channel_id, {"token_expires_at": utcnow() + dt.timedelta(days=2)})
    checks = await run_checks(server.core.settings)
    assert checks["channels"].status == "warn"
    text = "\n".join([checks["channels"].summary, *checks["channels"].lines])
    assert "access token expires in 1 days" in text
    assert "17841499999999999 (1 bodies)" in text

    await store.channels.set_fields(channel_id, {"needs_reauth": True})
    checks = await run_checks(server.core.settings)
    assert checks["channels"].status == "fail"
    assert "needs re-authorisation" in checks["channels"].summary
    assert "fresh access token" in checks["channels"].advice


async def test_media_queue_overdue_jobs_and_failures(server: RunningServer) -> None:
    await connect_tenant(server.client)
    await server.core.media.stop()  # no worker here: the jobs below stay as written
    checks = await run_checks(server.core.settings)
    assert checks["media"].status == "skip"

    coll = server.core.store.media_jobs.coll
    now = utcnow()

    async def job(state: str, due: dt.datetime) -> None:
        await coll.insert_one(
            {"message_id": ObjectId(), "key": "attachments.0", "state": state, "next_attempt_at": due}
        )

    await job("completed", now - dt.timedelta(hours=3))
    await job("pending", now + dt.timedelta(seconds=30))  # backing off
    checks = await run_checks(server.core.settings)
    assert checks["media"].status == "pass"
    assert checks["media"].summary == "1 downloads waiting, none overdue"

    await job("pending", now - dt.timedelta(minutes=20))
    await job("failed", now - dt.timedelta(hours=5))
    checks = await run_checks(server.core.settings)
    assert checks["media"].status == "warn"
    assert checks["media"].summary == (
        "2 downloads waiting, one due since 20 min ago; 1 failed for good (igsync media list-failed)"
    )
    assert "IGSYNC_MEDIA_CONCURRENCY=0" in checks["media"].advice
    assert checks["media"].details["pending"] == 2 and checks["media"].details["failed"] == 1


async def test_trigger_outbox_oldest_pending_job(server: RunningServer) -> None:
    await connect_tenant(server.client)
    checks = await run_checks(server.core.settings)
    assert checks["trigger_outbox"].status == "skip"

    jobs = server.core.store.db[doc.diagnostics.TRIGGER_JOBS_COLLECTION]
    await jobs.insert_one({"state": "delivered", "created_at": utcnow() - dt.timedelta(hours=3)})
    checks = await run_checks(server.core.settings)
    assert checks["trigger_outbox"].status == "pass"
    assert checks["trigger_outbox"].details["pending"] == 0

    await jobs.insert_one({"state": "pending", "created_at": utcnow() - dt.timedelta(seconds=20)})
    checks = await run_checks(server.core.settings)
    assert checks["trigger_outbox"].status == "pass"
    assert re.fullmatch(r"1 undelivered, the oldest created 2\d s ago", checks["trigger_outbox"].summary)

    await jobs.insert_one({"state": "pending", "created_at": utcnow() - dt.timedelta(hours=2)})
    await jobs.insert_one({"state": "dead", "created_at": utcnow() - dt.timedelta(hours=5)})
    checks = await run_checks(server.core.settings)
    assert checks["trigger_outbox"].status == "warn"
    assert checks["trigger_outbox"].summary == "2 undelivered, the oldest created 2 h ago; 1 dead-lettered"
    assert "igsync triggers retry" in checks["trigger_outbox"].advice


@pytest.mark.slow
def test_doctor_after_make_run_uses_the_running_embedded_stores(tmp_path: Path) -> None:
    env = {k: v for k, v in server_env(Settings()).items() if not k.startswith("IGSYNC_")}
    env.update({"IGSYNC_DATA_DIR": str(tmp_path / "var"), "IGSYNC_PORT": str(free_port())})
    handle = ServerProcessHandle(env, tmp_path / "serve.log").start(timeout=60)
    try:
        result = run_doctor(env, "--json")
    finally:
        assert handle.terminate() == 0
    assert result.returncode == 0, result.stdout + result.stderr
    checks = by_name(json.loads(result.stdout))
    assert checks["config"]["summary"].endswith("mode: embedded (dev secrets from the data directory)")
    # The demo channel of the first start; no webhook yet, which is a warning with advice, not a failure.
    assert checks["channels"]["status"] == "warn"
    assert checks["channels"]["details"]["channels"][0]["page_id"] == "17841400000000001"
    assert "webhook subscription" in checks["channels"]["advice"]
    assert {c["status"] for n, c in checks.items() if n not in ("channels", "trigger_outbox", "media")} == {"pass"}


async def test_doctor_reports_a_secret_left_as_in_env_example(stores: EmbeddedStores, tmp_path: Path) -> None:
    env = server_env(make_settings(stores, tmp_path), IGSYNC_VERIFY_TOKEN="replace-with-a-long-random-token")
    result = run_doctor(env, "--no-server", "--json")
    assert result.returncode == 1
    config = by_name(json.loads(result.stdout))["config"]
    assert config["status"] == "fail"
    assert "IGSYNC_VERIFY_TOKEN still holds a placeholder value" in config["summary"]


@pytest.mark.parametrize("kind", ["cluster", "sentinel"])
async def test_redis_and_pubsub_checks_pass_on_each_topology(kind: str, stores: EmbeddedStores, tmp_path: Path) -> None:
    """doctor reaches Redis and carries a pub/sub message the way the hub does (sharded on a
    cluster, on the master the Sentinels name), on real local topologies."""
    topology = TOPOLOGIES[kind](tmp_path / kind)
    await asyncio.get_running_loop().run_in_executor(None, topology.start)
    try:
        settings = make_settings(stores, tmp_path, **topology.settings())
        checks = await run_checks(settings)
        assert checks["redis"].status == "pass", checks["redis"]
        assert ("cluster via" if kind == "cluster" else "sentinel mymaster via") in checks["redis"].summary
        assert checks["pubsub"].status == "pass", checks["pubsub"]
    finally:
        await asyncio.get_running_loop().run_in_executor(None, topology.stop)
