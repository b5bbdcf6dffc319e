"""The MongoDB connection and the repositories built on it.

:class:`Store` owns the ``AsyncMongoClient`` (created inside the running loop, one per
loop — PyMongo's async client is bound to the loop it first runs on), the database
handle, one repository object per collection, and the start-up index creation. Every
query of the project lives in a repository module of this package.
"""

from __future__ import annotations

import logging
from typing import Any

import pymongo
from pymongo import AsyncMongoClient, monitoring

from models.channels import ChannelRepository
from models.conversations import ConversationRepository
from models.customers import CustomerRepository
from models.echo_pairs import EchoPairRepository
from models.errors import LONG_OPERATION_SECS
from models.expiry import ExpiredDocuments, TtlIndexes
from models.heartbeats import HeartbeatRepository
from models.history_runs import HistoryRunRepository
from models.media_files import MediaFileRepository
from models.media_jobs import MediaJobRepository
from models.message_updates import MessageUpdateRepository
from models.messages import MessageRepository
from models.orphan_events import OrphanEventRepository
from models.outbound import OutboundRepository
from models.tokens import TokenRepository
from models.trigger_jobs import TriggerJobRepository, TriggerLaneRepository
from models.webhook_events import WebhookEventRepository

log = logging.getLogger("igsync.store")


def mongo_client(
    url: str, *, timeout_ms: int = 5000, write_concern: str = "majority", listeners: list[Any] | None = None
) -> AsyncMongoClient:
    """The one way the project builds a MongoDB client.

    ``tz_aware`` so every datetime that comes back is explicit UTC. Every write is
    journaled (``j: true``) with ``w`` = ``write_concern`` (``majority`` or a node count):
    igsync answers Meta 200 only after its writes return, and Meta never sends an
    acknowledged message again, so a write that sits in an unflushed journal buffer when
    the store crashes is a message lost for good. Retryable writes are left to the URL
    (the embedded server's URL turns them off: SecantusDB scans its retryable-write table
    on every write when they are on).
    """
    w: str | int = int(write_concern) if write_concern.isdigit() else write_concern
    return AsyncMongoClient(
        url,
        w=w,
        journal=True,
        tz_aware=True,
        serverSelectionTimeoutMS=timeout_ms,
        connectTimeoutMS=timeout_ms,
        # A store that accepts a connection and then stops answering (frozen, swapping, a
        # half-open link) would otherwise hold the request until the client gives up. The
        # socket timeout alone is not a bound: concurrent operations then queue for new
        # connections (two are opened at a time), each waiting out its own timeout — 20
        # webhooks took 11.5 s. timeoutMS bounds each operation whole, queueing included.
        socketTimeoutMS=timeout_ms,
        timeoutMS=timeout_ms,
        event_listeners=listeners or [],
        appname="igsync",
    )


class Store:
    """MongoDB for one process: client, database, repositories."""

    def __init__(
        self,
        url: str,
        db_name: str,
        *,
        timeout_ms: int = 5000,
        write_concern: str = "majority",
        webhook_events_ttl_days: int = 7,
        trigger_jobs_ttl_days: int = 7,
        orphan_events_ttl_days: int = 30,
        listeners: list[monitoring.CommandListener] | None = None,
        expire_by_igsync: bool = False,
    ) -> None:
        self.client = mongo_client(url, timeout_ms=timeout_ms, write_concern=write_concern, listeners=listeners)
        self.db = self.client[db_name]
        # TTL indexes as the store's own (MongoDB) or as plain indexes igsync's sweep reads
        # (the embedded store, whose sweeper stalls every command: models/expiry.py).
        self.ttl = TtlIndexes(by_igsync=expire_by_igsync)
        self.channels = ChannelRepository(self.db)
        self.customers = CustomerRepository(self.db)
        self.conversations = ConversationRepository(self.db)
        self.messages = MessageRepository(self.db)
        self.tokens = TokenRepository(self.db)
        self.webhook_events = WebhookEventRepository(self.db, ttl_days=webhook_events_ttl_days, ttl=self.ttl)
        self.trigger_jobs = TriggerJobRepository(self.db, delivered_ttl_days=trigger_jobs_ttl_days, ttl=self.ttl)
        self.trigger_lanes = TriggerLaneRepository(self.db, ttl=self.ttl)
        # Changes to stored messages, events that came before their message, the media queue and files.
        self.message_updates = MessageUpdateRepository(self.db)
        self.orphan_events = OrphanEventRepository(self.db, ttl_days=orphan_events_ttl_days, ttl=self.ttl)
        self.media_jobs = MediaJobRepository(self.db)
        self.media_files = MediaFileRepository(self.db)
        self.echo_pairs = EchoPairRepository(self.db, ttl=self.ttl)
        # Messages sent through igsync wait on the messages collection itself (models/outbound.py).
        self.outbound = OutboundRepository(self.db)
        # Accounts: history imports and gap repairs (resumable runs), process heartbeats and gaps.
        self.history_runs = HistoryRunRepository(self.db)
        self.heartbeats = HeartbeatRepository(self.db)
        # Expiry by the TTL indexes, for a store whose own TTL monitor is off (the embedded one).
        self.expiry = ExpiredDocuments(self.db, self.ttl)
        self.repositories: list[Any] = [
            self.channels,
            self.customers,
            self.conversations,
            self.messages,
            self.tokens,
            self.webhook_events,
            self.trigger_jobs,
            self.trigger_lanes,
            self.message_updates,
            self.orphan_events,
            self.media_jobs,
            self.media_files,
            self.echo_pairs,
            self.outbound,
            self.history_runs,
            self.heartbeats,
        ]

    async def ensure_indexes(self) -> None:
        """Create every index idempotently (safe at every start, from every process)."""
        # Start-up work, not a request: an index build may take longer than a request's bound.
        with pymongo.timeout(LONG_OPERATION_SECS):
            for repo in self.repositories:
                await repo.ensure_indexes()
        await self.adapt_to_server()

    async def adapt_to_server(self) -> None:
        """Use MongoDB 8.0's client ``bulkWrite`` (several collections' writes in one command)
        only where it is journaled like any write: not before 8.0 (no such command), and not on
        SecantusDB, which runs the writes of a ``bulkWrite`` without its write concern — acked,
        then lost when the process is killed (``tests/models/test_client_bulk_write.py``). Off
        until this has run: a store that was not adapted sends plain, journaled commands."""
        info = await self.client.admin.command("buildInfo")
        journaled = "secantusVersion" not in info and list(info.get("versionArray") or [0]) >= [8]
        self.messages.use_client_bulk_write(journaled)
        self.conversations.use_client_bulk_write(journaled)

    async def ping(self) -> bool:
        """Whether MongoDB answers a ping."""
        await self.db.command("ping")
        return True

    async def server_version(self) -> str:
        """The server's version, as buildInfo reports it."""
        info = await self.client.admin.command("buildInfo")
        return str(info.get("version", "unknown"))

    async def close(self) -> None:
        """Close the client and its pool."""
        await self.client.close()
