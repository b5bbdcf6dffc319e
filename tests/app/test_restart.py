"""A restart during a pending download finishes it after the restart: a real
``igsync serve`` process is killed while the fake CDN holds its download, a new process
starts on the same stores, takes the job over once the lease expired, and completes it."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from bson import ObjectId

from models.store import Store
from server.app.embedded import free_port
from tests.fakes.cdn import JPEG, FakeCdn
from tests.support.events import fixture_with
from tests.support.helpers import ADMIN_TOKEN, Client, ServerProcessHandle, body_of, server_env, wait_for
from tests.support.server import make_settings


@pytest.mark.slow
async def test_a_download_cut_by_a_crash_completes_after_the_restart(stores: Any, tmp_path: Path) -> None:
    cdn = FakeCdn().start()
    gate = asyncio.Event()  # never opened: the first download hangs until its process dies
    url = cdn.add("held", body=JPEG, content_type="image/jpeg", gate=gate, gated_times=1)
    settings = make_settings(stores, tmp_path, port=free_port())
    env = server_env(
        settings,
        IGSYNC_MEDIA_LEASE_SECS="2",
        IGSYNC_MEDIA_TIMEOUT_SECS="1.5",
        IGSYNC_MEDIA_POLL_SECS="0.2",
        IGSYNC_MEDIA_RETRY_BASE_SECS="0.1",
    )
    first = ServerProcessHandle(env, tmp_path / "first.log")
    second = ServerProcessHandle(env, tmp_path / "second.log")
    client = Client(first.base_url)
    store = Store(settings.mongo_url or "", settings.mongo_db)
    try:
        first.start()
        response = await client.post(
            "/api/v1/channels",
            {"page_id": "17841400000000001", "username": "shop", "owner": {"id": 1, "email": "o@example.com"}},
            token=ADMIN_TOKEN,
        )
        assert response.code == 201, response.body
        token = body_of(await client.post("/api/v1/tokens", {"owner_email": "o@example.com"}, token=ADMIN_TOKEN))[
            "token"
        ]
        response = await client.webhook(fixture_with("customer_image", urls=[url]))
        assert response.code == 200, response.body
        message_id = ObjectId(body_of(response)["data"]["message"]["id"])

        await wait_for(lambda: cdn.count("held") == 1)
        [job] = await store.media_jobs.for_message(message_id)
        assert job["state"] == "running" and job["attempts"] == 1
        dead_owner = job["lease_owner"]
        first.kill()  # SIGKILL mid-download: no clean shutdown, the lease stays

        second.start()

        async def completed() -> Any:
            [job] = await store.media_jobs.for_message(message_id)
            return job if job["state"] != "running" else None

        job = await wait_for(completed, timeout=30)
        doc = await store.message_updates.get(message_id)
        assert doc["processing_status"] == "completed"
        assert job["state"] == "completed" and job["attempts"] == 2
        assert job["lease_owner"] != dead_owner and cdn.count("held") == 2
        media = await Client(second.base_url).get(f"/media/{doc['media_file']}", token=token)
        assert media.code == 200 and media.body == JPEG
        assert "media job" in second.output() and "completed" in second.output()
    finally:
        first.kill()
        second.kill()
        client.close()
        gate.set()
        await store.client.drop_database(settings.mongo_db)
        await store.close()
        await cdn.stop()
