"""Latency and failure metrics of the two store clients, measured where every call passes.

* :class:`MongoCommandMetrics` — a PyMongo ``CommandListener`` (handed to the
  ``AsyncMongoClient`` by :func:`server.app.core.build_core`): every command's round trip,
  labelled by command name from :data:`server.metrics.MONGO_COMMANDS`.
* :class:`InstrumentedRedis` / :class:`InstrumentedRedisCluster` — the ``redis.asyncio``
  client classes the project uses (one node or Sentinel / Cluster): each command (and each
  pipeline as one round trip) timed and its exceptions counted, labelled from
  :data:`server.metrics.REDIS_COMMANDS`. On a cluster a command's time includes the
  redirections and slot-map refreshes it needed.

These measure the *clients*. ``igsync_store_errors_total`` stays the count of operations
the server needed and could not do (counted once, where the failure is handled).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import redis.asyncio as aioredis
from pymongo import monitoring
from redis.asyncio.client import Pipeline
from redis.asyncio.cluster import ClusterPipeline, RedisCluster

from server.ops.metrics import OTHER, REDIS_COMMANDS, Metrics, bounded

# Commands whose duration is a wait for data when they block: counted, not timed.
_ALWAYS_BLOCKING = frozenset({"blpop", "brpop", "blmove", "bzpopmin", "bzpopmax", "brpoplpush", "wait", "waitaof"})
_BLOCK_OPTION_COMMANDS = frozenset({"xread", "xreadgroup"})


class MongoCommandMetrics(monitoring.CommandListener):
    """Runs on the event loop thread for every command of the async client: keep it cheap."""

    def __init__(self, metrics: Metrics) -> None:
        self.commands = metrics.mongo_commands

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        """Nothing to measure at the start."""
        return None

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        """Observe a command's round trip."""
        duration, _ = self.commands.get(event.command_name) or self.commands[OTHER]
        duration.observe(event.duration_micros / 1e6)

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        """Observe a failed command's round trip and count it."""
        duration, failures = self.commands.get(event.command_name) or self.commands[OTHER]
        duration.observe(event.duration_micros / 1e6)
        failures.inc()


def _word(arg: Any) -> str:
    return (arg.decode("ascii", "replace") if isinstance(arg, bytes) else str(arg)).lower()


def redis_command_name(args: tuple[Any, ...]) -> str:
    """The metric label of a Redis command."""
    if not args:
        return OTHER
    # Multi-word commands arrive as "SCRIPT LOAD", "CLIENT SETINFO": the first word names them.
    return bounded(_word(args[0]).split(" ", 1)[0], REDIS_COMMANDS)


def _blocks(args: tuple[Any, ...]) -> bool:
    if not args:
        return False
    name = _word(args[0])
    if name in _ALWAYS_BLOCKING:
        return True
    return name in _BLOCK_OPTION_COMMANDS and any(isinstance(a, (str, bytes)) and _word(a) == "block" for a in args[1:])


class _Timed:
    """Observe one round trip: duration unless it blocks, a failure when it raises."""

    def __init__(self, metrics: Metrics | None, command: str, *, timed: bool = True) -> None:
        self.children = None if metrics is None else metrics.redis_commands[command]
        self.timed = timed

    def __enter__(self) -> _Timed:
        self.started = time.perf_counter()
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if self.children is None:
            return
        duration, failures = self.children
        if self.timed:
            duration.observe(time.perf_counter() - self.started)
        # A cancelled call (shutdown, a timeout of the caller) is not a failure of Redis.
        if exc_type is not None and not issubclass(exc_type, (asyncio.CancelledError, GeneratorExit)):
            failures.inc()


class InstrumentedPipeline(Pipeline):
    redis_metrics: Metrics | None = None

    async def execute(self, raise_on_error: bool = True) -> list[Any]:
        """Run the pipeline as one timed command."""
        if not self.command_stack and not self.watching:
            return []
        name = "multi" if (self.is_transaction or self.explicit_transaction) else "pipeline"
        with _Timed(self.redis_metrics, name):
            return await super().execute(raise_on_error)


class InstrumentedRedis(aioredis.Redis):
    """``redis.asyncio.Redis`` that reports each round trip to :class:`Metrics`."""

    redis_metrics: Metrics | None = None

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        """Run a command, timed (blocking reads are not)."""
        with _Timed(self.redis_metrics, redis_command_name(args), timed=not _blocks(args)):
            return await super().execute_command(*args, **options)

    def pipeline(self, transaction: bool = True, shard_hint: str | None = None) -> Pipeline:
        """A pipeline timed as one command."""
        pipe = InstrumentedPipeline(self.connection_pool, self.response_callbacks, transaction, shard_hint)
        pipe.redis_metrics = self.redis_metrics
        return pipe


class InstrumentedClusterPipeline(ClusterPipeline):
    redis_metrics: Metrics | None = None

    async def execute(self, raise_on_error: bool = True, allow_redirections: bool = True) -> list[Any]:
        """Run the pipeline (one round trip per shard) as one timed command."""
        with _Timed(self.redis_metrics, "pipeline"):
            return await super().execute(raise_on_error, allow_redirections)


class InstrumentedRedisCluster(RedisCluster):
    """``redis.asyncio.cluster.RedisCluster`` that reports each command to :class:`Metrics`."""

    redis_metrics: Metrics | None = None

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        """Run a command, timed (blocking reads are not)."""
        with _Timed(self.redis_metrics, redis_command_name(args), timed=not _blocks(args)):
            return await super().execute_command(*args, **kwargs)

    def pipeline(self, transaction: Any = None, shard_hint: Any = None) -> ClusterPipeline:
        """A pipeline timed as one command."""
        pipe = InstrumentedClusterPipeline(self, transaction)
        pipe.redis_metrics = self.redis_metrics
        return pipe
