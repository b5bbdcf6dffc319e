"""The webhook audit trail: every processed body into ``webhook_events``, after its answer.

Owns *when* the audit copies are written. They are for people and ``igsync replay``; what a
webhook promises (its messages stored before the 200) never rests on them. So a copy is
queued when its request is answered and written with the others of the next
``AUDIT_LINGER_SECS`` in one ``insert_many``, off the request's path.

Why: awaited in the request it was one MongoDB round trip of the four or five a new message
costs, and at a paced load nothing arrives together to share it (docs/performance.md, issue
18 item 7). What it costs: a process that is killed loses the copies of its last
``AUDIT_LINGER_SECS`` — the messages of those webhooks are stored; a drained process
(SIGTERM) writes every queued copy before it closes the store (:meth:`AuditTrail.stop`).
A failed write is logged and counted, never retried: the 503 that a failing store gives the
next webhooks already makes Meta redeliver them, and their copies with them.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Protocol

from pymongo.errors import PyMongoError

from server.ops.metrics import Metrics

log = logging.getLogger("igsync.webhook")

# How long a copy waits for others before the batch is written (one insert per this long).
AUDIT_LINGER_SECS = 0.25
# A batch this large is written at once, without waiting out the linger.
AUDIT_MAX_BATCH = 500


class AuditWriter(Protocol):
    """Where the copies go (``models.webhook_events.WebhookEventRepository``)."""

    async def insert_many(self, docs: list[dict[str, Any]]) -> None:
        """Write a batch of audit documents."""
        ...


class AuditTrail:
    """The process's queue of audit copies; a service of ``core.services`` (stop = flush)."""

    def __init__(
        self,
        writer: AuditWriter,
        metrics: Metrics,
        *,
        linger_secs: float = AUDIT_LINGER_SECS,
        max_batch: int = AUDIT_MAX_BATCH,
    ) -> None:
        self.writer = writer
        self.metrics = metrics
        self.linger_secs = linger_secs
        self.max_batch = max_batch
        self._queued: list[dict[str, Any]] = []
        self._timer: asyncio.TimerHandle | None = None
        # Writes in flight, kept so that stop() can wait for them and the loop cannot
        # collect a task that is still running.
        self._writing: set[asyncio.Task[None]] = set()

    def add(self, doc: dict[str, Any]) -> None:
        """Queue one copy; never waits and never fails the request that made it."""
        self._queued.append(doc)
        if len(self._queued) >= self.max_batch:
            self._write_queued()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.linger_secs, self._write_queued)

    def _write_queued(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        batch, self._queued = self._queued, []
        if not batch:
            return
        task = asyncio.get_running_loop().create_task(self._write(batch))
        self._writing.add(task)
        task.add_done_callback(self._writing.discard)

    async def _write(self, batch: list[dict[str, Any]]) -> None:
        try:
            await self.writer.insert_many(batch)
        except PyMongoError as exc:
            self.metrics.store_errors.labels(store="mongo").inc()
            log.warning(
                "could not record %d webhook bodies for audit (%s)",
                len(batch),
                type(exc).__name__,
                extra={"event": "store_error"},
            )

    async def flush(self) -> None:
        """Write every queued copy now and wait for all writes in flight."""
        self._write_queued()
        while self._writing:
            await asyncio.gather(*self._writing, return_exceptions=True)

    @property
    def queued(self) -> int:
        """Copies waiting for their batch."""
        return len(self._queued)

    async def start(self) -> None:
        """Nothing to start: the first copy arms the timer."""

    async def stop(self) -> None:
        """Drain: what the process answered gets its copy before the store closes."""
        await self.flush()
