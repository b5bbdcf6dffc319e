"""How igsync's collections are laid out on a sharded MongoDB cluster: the shard plan.

Owns, for every collection, its shard key or why it is not sharded (:data:`SHARD_PLAN`), the
``shardCollection`` commands an operator runs (:func:`shard_commands`, printed by
``igsync mongo shard-plan``), and the rule every query on a hot path follows: it names its
collection's shard key, so ``mongos`` sends it to one shard (:func:`names_shard_key`).

Why ``channel_id``: every hot path — a webhook, mark-sent, a send, a socket's resume, the inbox
REST API — works inside one channel (one business account), and every uniqueness that makes
dedup correct is per channel (a mid, a customer, a conversation). MongoDB enforces a unique
index on a sharded collection only when it starts with the shard key, so each one here does
(``tests/models/test_sharding.py`` reads the index definitions against this plan).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Sharded:
    """Sharded on ``key`` (range, or ``hashed`` on a single field)."""

    key: tuple[str, ...]
    why: str
    hashed: bool = False

    def spec(self) -> dict[str, Any]:
        """The shard key document of ``shardCollection``."""
        return {field: ("hashed" if self.hashed else 1) for field in self.key}


@dataclass(frozen=True)
class NotSharded:
    """Left on the primary shard, and why that is fine."""

    why: str


BY_CHANNEL = ("channel_id",)

SHARD_PLAN: dict[str, Sharded | NotSharded] = {
    "messages": Sharded(BY_CHANNEL, "the largest collection; every read and unique key is per channel"),
    "conversations": Sharded(BY_CHANNEL, "one per customer of a channel; read with its messages"),
    "customers": Sharded(BY_CHANNEL, "one per Instagram user who wrote to a channel"),
    "orphan_events": Sharded(BY_CHANNEL, "events waiting for their message, looked up per channel"),
    "media.chunks": Sharded(("files_id", "n"), "media bytes (GridFS chunks): spread by file, read by file"),
    "webhook_events": Sharded(("_id",), "the audit copy of each webhook body, written once, expired by TTL", True),
    "echo_pairs": Sharded(("_id",), "a uniqueness document per send: its _id is the key", True),
    "channels": NotSharded("one document per connected account: small, cached by every process"),
    "tokens": NotSharded("one document per API token: small"),
    "media.files": NotSharded("one small document per media file"),
    "media_jobs": NotSharded("a work queue: its size is the backlog, claimed across channels by due time"),
    "trigger_jobs": NotSharded("a work queue claimed across channels by due time; delivered jobs expire"),
    "trigger_lanes": NotSharded("one small document per conversation with triggers in flight"),
    "history_runs": NotSharded("one document per history import or repair run"),
    "heartbeats": NotSharded("one document per process"),
    "gaps": NotSharded("one document per outage longer than Meta's retries"),
}


def shard_commands(database: str) -> list[dict[str, Any]]:
    """``enableSharding`` then one ``shardCollection`` per sharded collection (admin database)."""
    commands: list[dict[str, Any]] = [{"enableSharding": database}]
    for name, plan in SHARD_PLAN.items():
        if isinstance(plan, Sharded):
            commands.append({"shardCollection": f"{database}.{name}", "key": plan.spec()})
    return commands


# Scans that go to every shard by design, each named by (collection, the fields its filter
# names — exactly those). Work queues polled across channels, each on an index that holds only
# the pending entries, so a poll costs each shard its own backlog: messages waiting to be sent,
# customer messages whose trigger jobs are not materialized yet. And the periodic stored-
# duplicates check (server/ops/monitor.py), off the hot path: one ten-second slice of
# ``created_at`` per command, every 30 s.
CROSS_CHANNEL_SCANS = {
    ("messages", frozenset({"send_due_at"})),
    ("messages", frozenset({"trigger_pending"})),
    ("messages", frozenset({"created_at", "type", "merged_into"})),
}


def is_cross_channel_scan(collection: str, command_name: str, command: Mapping[str, Any]) -> bool:
    """One of :data:`CROSS_CHANNEL_SCANS`: its filter names exactly that scan's fields."""
    if command_name == "aggregate":
        query = ((command.get("pipeline") or [{}])[0]).get("$match") or {}
    else:
        query = command.get(_FILTER_OF.get(command_name, "filter")) or {}
    return (collection, frozenset(query)) in CROSS_CHANNEL_SCANS


# Commands whose target is a filter, and where it is.
_FILTER_OF = {"find": "filter", "count": "query", "distinct": "query", "findAndModify": "query"}


def names_shard_key(command_name: str, command: Mapping[str, Any], key: tuple[str, ...]) -> bool:
    """Whether a command names every field of ``key`` by value (equality or ``$in``), so that
    ``mongos`` can route it to the shards that hold those values, not to all of them."""
    if command_name == "insert":
        return all(all(field in doc for field in key) for doc in command.get("documents", []))
    if command_name in ("update", "delete"):
        statements = command.get("updates") or command.get("deletes") or []
        return all(_targets(statement.get("q") or {}, key) for statement in statements)
    if command_name == "aggregate":
        pipeline = command.get("pipeline") or [{}]
        return _targets(pipeline[0].get("$match") or {}, key)
    if command_name in _FILTER_OF:
        return _targets(command.get(_FILTER_OF[command_name]) or {}, key)
    return True  # getMore, killCursors, index commands: not routed by a filter


def client_bulk_write_parts(command: Mapping[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """A client ``bulkWrite`` (one command, several collections) as the per-collection
    commands it stands for: ``(command name, collection, command)`` with the documents and
    filters where :func:`names_shard_key` looks for them."""
    collections = [str(ns.get("ns", "")).split(".", 1)[-1] for ns in command.get("nsInfo") or []]
    parts: list[tuple[str, str, dict[str, Any]]] = []
    for op in command.get("ops") or []:
        if "insert" in op:
            parts.append(("insert", collections[op["insert"]], {"documents": [op.get("document") or {}]}))
        elif "update" in op:
            parts.append(("update", collections[op["update"]], {"updates": [{"q": op.get("filter") or {}}]}))
        elif "delete" in op:
            parts.append(("delete", collections[op["delete"]], {"deletes": [{"q": op.get("filter") or {}}]}))
    return parts


def _targets(query: Mapping[str, Any], key: tuple[str, ...]) -> bool:
    for field in key:
        if field not in query:
            return False
        value = query[field]
        if isinstance(value, Mapping) and any(op.startswith("$") for op in value):
            if not set(value) <= {"$eq", "$in"}:
                return False
    return True


def in_channel(query: dict[str, Any], channel_id: Any) -> dict[str, Any]:
    """``query`` routed to the channel's shard (unchanged when the channel is not known: an
    internal look-up by id, which a cluster sends to every shard)."""
    return query if channel_id is None else {**query, "channel_id": channel_id}
