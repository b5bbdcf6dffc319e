"""The audit trail (server/ingest/audit.py) against the real embedded store: a webhook's copy is
written after its answer, copies of one linger share one insert, a full batch does not wait,
stop() writes what is queued, and a store that fails loses copies without failing anything.
(That a SIGTERMed process writes the copy of every acknowledged body: tests/app/test_drain.py.)"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from models.store import mongo_client
from models.webhook_events import WebhookEventRepository
from server.app.embedded import EmbeddedStores, free_port
from server.ingest.audit import AuditTrail
from server.ops.metrics import Metrics
from tests.support.commands import Commands
from tests.support.helpers import messaging_body, text_item, wait_for
from tests.support.server import RunningServer, Tenant

RECEIVED = dt.datetime(2026, 12, 6, 12, 0, tzinfo=dt.UTC)
# Longer than any test: a copy is written only by what the test does (a full batch, stop()).
NEVER_SECS = 3600.0


@pytest.fixture
async def audit_db(stores: EmbeddedStores) -> AsyncIterator[tuple[WebhookEventRepository, Commands]]:
    commands = Commands()
    client = mongo_client(stores.mongo_url or "", listeners=[commands])
    database = client[f"audit_{uuid.uuid4().hex[:12]}"]
    yield WebhookEventRepository(database), commands
    await client.drop_database(database.name)
    await client.close()


def copy_of(repo: WebhookEventRepository, n: int) -> dict[str, Any]:
    return repo.build(f'{{"n": {n}}}'.encode(), ["17841400000000001"], RECEIVED, [{"status": "success"}])


async def test_copies_queue_until_their_batch_and_go_in_one_insert(
    audit_db: tuple[WebhookEventRepository, Commands],
) -> None:
    repo, commands = audit_db
    trail = AuditTrail(repo, Metrics(), linger_secs=NEVER_SECS)
    for n in range(3):
        trail.add(copy_of(repo, n))
    assert trail.queued == 3
    assert await repo.coll.count_documents({}) == 0  # queued, not written
    commands.seen.clear()
    await trail.stop()
    assert trail.queued == 0
    assert sorted(bytes(d["body"]) for d in await repo.coll.find({}).to_list(None)) == [
        b'{"n": 0}',
        b'{"n": 1}',
        b'{"n": 2}',
    ]
    assert commands.seen["insert"] == 1


async def test_a_full_batch_is_written_without_waiting_for_the_linger(
    audit_db: tuple[WebhookEventRepository, Commands],
) -> None:
    repo, _ = audit_db
    trail = AuditTrail(repo, Metrics(), linger_secs=NEVER_SECS, max_batch=2)
    trail.add(copy_of(repo, 1))
    assert trail.queued == 1
    trail.add(copy_of(repo, 2))
    assert trail.queued == 0
    assert await wait_for(lambda: _count(repo, 2))
    trail.add(copy_of(repo, 3))  # the next batch starts over
    assert trail.queued == 1
    await trail.stop()
    assert await repo.coll.count_documents({}) == 3


async def test_a_lone_copy_is_written_after_the_linger(audit_db: tuple[WebhookEventRepository, Commands]) -> None:
    repo, _ = audit_db
    trail = AuditTrail(repo, Metrics(), linger_secs=0.05)
    trail.add(copy_of(repo, 1))
    assert await wait_for(lambda: _count(repo, 1))
    assert trail.queued == 0


async def test_a_store_that_fails_loses_the_copies_counted_and_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    dead = mongo_client(f"mongodb://127.0.0.1:{free_port()}/?directConnection=true&serverSelectionTimeoutMS=200")
    repo = WebhookEventRepository(dead["audit_dead"])
    metrics = Metrics()
    trail = AuditTrail(repo, metrics, linger_secs=NEVER_SECS)
    trail.add(copy_of(repo, 1))
    trail.add(copy_of(repo, 2))
    with caplog.at_level(logging.WARNING, logger="igsync.webhook"):
        await trail.stop()  # does not raise
    await dead.close()
    assert metrics.store_errors.labels(store="mongo")._value.get() == 1
    assert any("could not record 2 webhook bodies for audit" in r.getMessage() for r in caplog.records)
    assert trail.queued == 0


async def test_the_webhook_answers_before_its_copy_is_written(server: RunningServer, tenant: Tenant) -> None:
    # The server's trail lingers for as long as the test needs: the answer cannot have waited.
    server.core.audit.linger_secs = NEVER_SECS
    response = await server.client.webhook(messaging_body(text_item("mid.audit.1", "first")))
    assert response.code == 200
    assert server.core.audit.queued == 1
    assert await server.core.store.db.webhook_events.count_documents({}) == 0
    assert await server.core.store.db.messages.count_documents({"mid": "mid.audit.1"}) == 1
    await server.core.audit.flush()
    event = await server.core.store.db.webhook_events.find_one({})
    assert event is not None and event["results"][0]["status"] == "success"


async def _count(repo: WebhookEventRepository, n: int) -> bool:
    return await repo.coll.count_documents({}) == n
