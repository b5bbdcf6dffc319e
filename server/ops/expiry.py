"""igsync's own TTL sweep: a background service that deletes expired documents, on for the
embedded store only.

Owns the loop; what expires and how it is deleted is :mod:`models.expiry`. Every
``IGSYNC_EXPIRY_SWEEP_SECS`` (0, the default, leaves expiry to the store's TTL monitor, as on
MongoDB) it deletes what the database's TTL indexes say has expired, and counts it in
``igsync_expired_documents_total{collection}``. ``igsync serve`` turns it on when it starts the
embedded SecantusDB, and the TTL indexes are then plain indexes (:class:`models.expiry.TtlIndexes`):
that store's own sweeper decodes every document of every TTL-indexed collection under its lock
each minute, and cannot be turned off from its command line.

With several worker processes each runs it: deleting a document twice deletes it once, and
a round that finds nothing expired is one index look-up per TTL index.
"""

from __future__ import annotations

import logging

from models.expiry import ExpiredDocuments
from models.timeutil import utcnow
from server.ops.loops import PollingLoop
from server.ops.metrics import Metrics

log = logging.getLogger("igsync.expiry")

# How long stop() lets a round finish (each of its commands is bounded far below this).
STOP_WAIT_SECS = 10.0


class ExpirySweeper:
    """The service (``core.services``): ``start()`` / ``stop()``, one round per interval."""

    def __init__(self, expired: ExpiredDocuments, metrics: Metrics, *, interval_secs: float) -> None:
        self.expired = expired
        self.metrics = metrics
        self.interval_secs = interval_secs
        self._loop = PollingLoop(
            "igsync-expiry-sweep", self.sweep, poll_secs=interval_secs, stop_wait_secs=STOP_WAIT_SECS, log=log
        )

    async def sweep(self) -> bool:
        """One round: delete what has expired now. Never "go again at once": a backlog is
        already deleted to the end within the round, in short commands."""
        deleted = await self.expired.delete_expired(utcnow())
        for collection, count in deleted.items():
            self.metrics.expired_documents.labels(collection=collection).inc(count)
            log.info("expired %d document(s) from %s", count, collection)
        return False

    async def start(self) -> None:
        """Start the sweep (when configured; 0 leaves expiry to the store)."""
        if self.interval_secs > 0:
            self._loop.start()

    async def stop(self) -> None:
        """Stop the sweep; a round in progress ends first."""
        await self._loop.stop()
