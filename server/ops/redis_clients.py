"""How igsync reaches Redis: one node, Sentinel or Cluster (API.md §7), and the one way a
client is built for any of them.

* **single** — ``IGSYNC_REDIS_URL`` (``redis://``, ``rediss://`` for TLS, ``unix://``);
* **sentinel** — ``IGSYNC_REDIS_SENTINELS`` (``host:port,…``) and
  ``IGSYNC_REDIS_SENTINEL_MASTER``; the URL gives only the password, db and TLS. The client
  asks the Sentinels for the master on every new connection, so after a failover the next
  connection goes to the promoted replica;
* **cluster** — ``IGSYNC_REDIS_CLUSTER=true``; the URL names any node. Commands follow the
  slot map (redis-py's cluster client); pub/sub is *sharded* (``SSUBSCRIBE``/``SPUBLISH``), so
  a channel's events stay on the shard that holds its log (:mod:`server.realtime.pubsub`).

Every key igsync uses in one script or one call shares a hash slot (``{channel_id}`` tags in
:mod:`server.realtime.eventlog`; one key per call elsewhere), so the same code runs on all three.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeAlias
from urllib.parse import unquote, urlsplit

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from config import Settings
from server.ops.metrics import Metrics
from server.ops.store_metrics import InstrumentedRedis, InstrumentedRedisCluster

# A Redis Cluster client retries MOVED/ASK and connection errors by refreshing its slot map;
# a failover takes the cluster a few node timeouts, so a command may wait through it.
CLUSTER_RETRIES = 3
# Every client pings an idle connection before using it again after this long, so a
# connection to a Redis that went away is noticed before a command is lost on it.
HEALTH_CHECK_SECS = 15

# What :meth:`RedisTopology.client` returns: commands and pipelines work alike on both.
RedisClient: TypeAlias = aioredis.Redis | RedisCluster

SINGLE = "single"
SENTINEL = "sentinel"
CLUSTER = "cluster"


@dataclass(frozen=True)
class RedisTopology:
    """Where Redis is and how it is laid out; builds every client of a process."""

    url: str
    cluster: bool = False
    sentinels: tuple[tuple[str, int], ...] = ()
    sentinel_master: str = "mymaster"

    @classmethod
    def of(cls, settings: Settings) -> RedisTopology:
        """The topology the settings name."""
        sentinels = tuple((host, int(port)) for host, _, port in (a.rpartition(":") for a in settings.redis_sentinels))
        return cls(settings.redis_url or "", settings.redis_cluster, sentinels, settings.redis_sentinel_master)

    @property
    def kind(self) -> str:
        """``single``, ``sentinel`` or ``cluster``."""
        if self.cluster:
            return CLUSTER
        return SENTINEL if self.sentinels else SINGLE

    @property
    def sharded(self) -> bool:
        """Pub/sub goes per shard (``SPUBLISH``/``SSUBSCRIBE``): on a cluster only."""
        return self.cluster

    def client(self, *, timeout_ms: int, retries: int | None = None, metrics: Metrics | None = None) -> RedisClient:
        """A client with short timeouts, since Redis is an accelerator (dedup hints, fan-out)
        and a slow Redis must not stall a webhook.

        ``retries``: that many immediate retries on connection errors and timeouts — for paths
        that have their own fallback. Without it, one immediate retry on a *connection* error
        only: a client otherwise has no retry at all, so after a Redis restart or failover the
        first command on every pooled connection failed ("Connection closed by server") although
        Redis was back. Timeouts are not retried (a hung Redis must cost one timeout, not two).
        With ``metrics``, every command's latency and failures are measured."""
        timeout = timeout_ms / 1000
        retry = (
            Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,))
            if retries is None
            else Retry(NoBackoff(), retries)
        )
        common: dict[str, Any] = {
            "socket_timeout": timeout,
            "socket_connect_timeout": timeout,
            "health_check_interval": HEALTH_CHECK_SECS,
            "decode_responses": False,
        }
        client: Any
        if self.cluster:
            # The cluster client's own retry refreshes the slot map between attempts (a failover
            # moves slots); its per-connection retry stays as above.
            client = InstrumentedRedisCluster.from_url(self.url, retry=Retry(NoBackoff(), CLUSTER_RETRIES), **common)
        elif self.sentinels:
            client = self._sentinel().master_for(
                self.sentinel_master, redis_class=InstrumentedRedis, retry=retry, **common, **self._credentials()
            )
        else:
            client = InstrumentedRedis.from_url(self.url, retry=retry, **common)
        client.redis_metrics = metrics
        return client

    def node_client(self, host: str, port: int, *, timeout_ms: int, metrics: Metrics | None = None) -> aioredis.Redis:
        """A plain client of one cluster node (a shard's pub/sub connection), with the
        cluster's credentials and TLS."""
        timeout = timeout_ms / 1000
        client = InstrumentedRedis(
            host=host,
            port=port,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            health_check_interval=HEALTH_CHECK_SECS,
            retry=Retry(NoBackoff(), 0),
            **self._credentials(with_db=False),
        )
        client.redis_metrics = metrics
        return client

    def _sentinel(self) -> Sentinel:
        # The Sentinels are asked with the same short timeouts; they hold no password of the
        # data nodes (sentinel_kwargs would carry theirs, not configured here).
        return Sentinel(list(self.sentinels), socket_timeout=1.0, socket_connect_timeout=1.0)

    def _credentials(self, *, with_db: bool = True) -> dict[str, Any]:
        parts = urlsplit(self.url)
        out: dict[str, Any] = {}
        if parts.username:
            out["username"] = unquote(parts.username)
        if parts.password:
            out["password"] = unquote(parts.password)
        if parts.scheme == "rediss":
            out["ssl"] = True
        db = parts.path.strip("/")
        if with_db and db.isdigit():
            out["db"] = int(db)
        return out

    def describe(self) -> str:
        """Where Redis is, without credentials (for logs and doctor)."""
        if self.sentinels:
            where = ",".join(f"{host}:{port}" for host, port in self.sentinels)
            return f"sentinel {self.sentinel_master} via {where}"
        parts = urlsplit(self.url)
        where = f"{parts.scheme}://{parts.hostname or ''}{':' + str(parts.port) if parts.port else ''}{parts.path}"
        return f"cluster via {where}" if self.cluster else where
