"""Real Redis topologies on loopback for the tests: a 3-master + 3-replica Cluster and a
master + replica + 3 Sentinels, from the same ``valkey-server`` binary the embedded Redis uses
(:func:`server.app.embedded.redis_binary`; Sentinel is that binary with ``--sentinel``).

Failover is fast on purpose (``cluster-node-timeout`` / ``down-after-milliseconds`` of one
second), so a test that kills a master waits a few seconds for the promotion, never minutes.

``IGSYNC_TEST_REDIS=cluster|sentinel`` makes the session's tests run on one of them
(tests/conftest.py); ``make test`` runs the suites marked ``topology`` that way.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from server.app.embedded import _die_with_parent, free_port, redis_binary

START_TIMEOUT_SECS = 30.0
PORT_ATTEMPTS = 3
NODE_TIMEOUT_MS = 1000
SLOT_RANGES = ((0, 5460), (5461, 10922), (10923, 16383))


def wait_until(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll ``condition`` until it is truthy (set-up of processes outside the event loop)."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = condition()
            if value:
                return value
        except (redis.RedisError, OSError) as exc:
            last = exc
        time.sleep(0.05)
    raise TimeoutError(f"{what} not reached within {timeout:g}s (last error: {last!r})")


class NodeExited(Exception):
    """A node's process ended while starting (its port was taken: see its log)."""


class Node:
    """One ``valkey-server`` process (data node or Sentinel)."""

    def __init__(
        self, root: Path, name: str, args: list[str], *, sentinel: bool = False, cluster_bus: bool = False
    ) -> None:
        self.port = free_port()
        # A cluster node's bus gets its own free port (by default port + 10000, which may be
        # taken or beyond 65535).
        self.bus_port = free_port() if cluster_bus else None
        self.dir = root / f"{name}-{self.port}"
        self.dir.mkdir(parents=True)
        self.name = name
        self.sentinel = sentinel
        self.args = args
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Node:
        for _ in range(PORT_ATTEMPTS):
            self._spawn()
            try:
                wait_until(self._answers, START_TIMEOUT_SECS, f"{self.name} on port {self.port}")
                return self
            except NodeExited:
                # Another process took a port between free_port() and the bind (pytest-xdist
                # workers start topologies at the same time; see the node's log): new ports.
                self.port = free_port()
                self.bus_port = None if self.bus_port is None else free_port()
        raise NodeExited(f"{self.name} exited at start {PORT_ATTEMPTS} times; see {self.dir / 'log'}")

    def _spawn(self) -> None:
        argv = [*redis_binary()]
        if self.sentinel:
            conf = self.dir / "sentinel.conf"
            conf.write_text("\n".join([f"port {self.port}", "bind 127.0.0.1", f"dir {self.dir}", *self.args]) + "\n")
            argv += [str(conf), "--sentinel"]
        else:
            argv += ["--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir), "--save", "",
                     "--appendonly", "no", *self.args]  # fmt: skip
            if self.bus_port is not None:
                argv += ["--cluster-port", str(self.bus_port)]
        log = open(self.dir / "log", "ab")  # kept open for the process's life
        self.proc = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent
        )

    def _answers(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise NodeExited(f"{self.name} exited (code {self.proc.returncode})")
        # Short and never retried: a port taken by another process may accept and stay silent,
        # and the node's exit must be seen at the next poll, not after the client's retries.
        probe = redis.Redis(
            host="127.0.0.1",
            port=self.port,
            socket_timeout=0.5,
            socket_connect_timeout=0.5,
            retry=Retry(NoBackoff(), 0),
        )
        try:
            return bool(probe.ping())
        finally:
            probe.close()

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2, socket_connect_timeout=1)

    def kill(self) -> None:
        """SIGKILL: the process vanishes as a crashed machine would."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class ClusterTopology:
    """Three masters (the slots split in three), each with one replica."""

    kind = "cluster"

    def __init__(self, root: Path) -> None:
        def node(name: str) -> Node:
            return Node(root, name, ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                                     "--cluster-node-timeout", str(NODE_TIMEOUT_MS),
                                     "--cluster-replica-validity-factor", "0"], cluster_bus=True)  # fmt: skip

        self.masters = [node(f"master{i}") for i in range(3)]
        self.replicas = [node(f"replica{i}") for i in range(3)]

    @property
    def nodes(self) -> list[Node]:
        return [*self.masters, *self.replicas]

    def start(self) -> ClusterTopology:
        for node in self.nodes:
            node.start()
        for node, (first, last) in zip(self.masters, SLOT_RANGES, strict=True):
            node.client().execute_command("CLUSTER ADDSLOTSRANGE", first, last)
        for node in self.nodes[1:]:
            first = self.masters[0]
            node.client().execute_command("CLUSTER MEET", "127.0.0.1", first.port, first.bus_port)
        wait_until(self._all_know_each_other, START_TIMEOUT_SECS, "cluster nodes meeting")
        for master, replica in zip(self.masters, self.replicas, strict=True):
            master_id = master.client().execute_command("CLUSTER MYID").decode()
            replica.client().execute_command("CLUSTER REPLICATE", master_id)
        wait_until(self._replicated, START_TIMEOUT_SECS, "cluster replicas in sync")
        wait_until(self._ok, START_TIMEOUT_SECS, "cluster_state:ok")
        return self

    def _all_know_each_other(self) -> bool:
        return all(len(n.client().execute_command("CLUSTER NODES")) == 6 for n in self.nodes)

    def _replicated(self) -> bool:
        return all(m.client().info("replication").get("connected_slaves") == 1 for m in self.masters)

    def _ok(self) -> bool:
        return all(n.client().execute_command("CLUSTER INFO")["cluster_state"] == "ok" for n in self.nodes if n.alive)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.masters[0].port}"

    def settings(self) -> dict[str, Any]:
        return {"redis_url": self.url, "redis_cluster": True}

    def env(self) -> dict[str, str]:
        return {"IGSYNC_REDIS_URL": self.url, "IGSYNC_REDIS_CLUSTER": "true"}

    def master_of(self, key: str) -> Node:
        """The master process that serves ``key`` now."""
        cluster = redis.RedisCluster(host="127.0.0.1", port=self._live().port)
        try:
            port = cluster.get_node_from_key(key).port
        finally:
            cluster.close()
        return next(n for n in self.nodes if n.port == port)

    def _live(self) -> Node:
        return next(n for n in self.nodes if n.alive)

    def wait_promoted(self, dead: Node, timeout: float = 30.0) -> None:
        """Until another node serves the dead master's slots and the cluster is ok again."""
        wait_until(lambda: self._ok() and self._replica_promoted(dead), timeout, "replica promotion")

    def _replica_promoted(self, dead: Node) -> bool:
        index = self.masters.index(dead) if dead in self.masters else self.replicas.index(dead)
        survivor = self.replicas[index] if dead in self.masters else self.masters[index]
        return survivor.client().info("replication").get("role") == "master"

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


class SentinelTopology:
    """A master, one replica and three Sentinels that agree (quorum 2) on a failover."""

    kind = "sentinel"
    name = "mymaster"

    def __init__(self, root: Path) -> None:
        self.root = root
        self.master = Node(root, "master", [])
        self.replica = Node(root, "replica", [])
        self.sentinels: list[Node] = []

    def start(self) -> SentinelTopology:
        self.master.start()
        self.replica.args = ["--replicaof", "127.0.0.1", str(self.master.port)]
        self.replica.start()
        wait_until(
            lambda: self.master.client().info("replication").get("connected_slaves") == 1,
            START_TIMEOUT_SECS,
            "replica in sync",
        )
        conf = [
            f"sentinel monitor {self.name} 127.0.0.1 {self.master.port} 2",
            f"sentinel down-after-milliseconds {self.name} {NODE_TIMEOUT_MS}",
            f"sentinel failover-timeout {self.name} 5000",
            f"sentinel parallel-syncs {self.name} 1",
        ]
        self.sentinels = [Node(self.root, f"sentinel{i}", conf, sentinel=True).start() for i in range(3)]
        wait_until(self._sentinels_agree, START_TIMEOUT_SECS, "sentinels knowing each other and the replica")
        return self

    def _sentinels_agree(self) -> bool:
        for sentinel in self.sentinels:
            client = sentinel.client()
            if len(client.sentinel_sentinels(self.name)) != 2 or len(client.sentinel_slaves(self.name)) != 1:
                return False
        return True

    @property
    def sentinel_addresses(self) -> str:
        return ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)

    def settings(self) -> dict[str, Any]:
        return {"redis_url": "redis://sentinel/0", "redis_sentinels": tuple(self.sentinel_addresses.split(","))}

    def env(self) -> dict[str, str]:
        return {"IGSYNC_REDIS_URL": "redis://sentinel/0", "IGSYNC_REDIS_SENTINELS": self.sentinel_addresses}

    def current_master(self) -> Node:
        _, port = self.sentinels[0].client().sentinel_get_master_addr_by_name(self.name)
        return next(n for n in (self.master, self.replica) if n.port == int(port))

    def wait_promoted(self, dead: Node, timeout: float = 30.0) -> Node:
        """Until every Sentinel names the other node as master, and it acts as one."""
        survivor = self.replica if dead is self.master else self.master

        def promoted() -> bool:
            for sentinel in self.sentinels:
                _, port = sentinel.client().sentinel_get_master_addr_by_name(self.name)
                if int(port) != survivor.port:
                    return False
            return survivor.client().info("replication").get("role") == "master"

        wait_until(promoted, timeout, "sentinel failover")
        return survivor

    def stop(self) -> None:
        for node in [*self.sentinels, self.replica, self.master]:
            node.stop()


TOPOLOGIES = {"cluster": ClusterTopology, "sentinel": SentinelTopology}


def from_env() -> str:
    """The topology the session runs on: ``IGSYNC_TEST_REDIS`` (empty: the embedded node)."""
    kind = os.environ.get("IGSYNC_TEST_REDIS", "").strip()
    if kind and kind not in TOPOLOGIES:
        raise ValueError(f"IGSYNC_TEST_REDIS must be one of {sorted(TOPOLOGIES)}, got {kind!r}")
    return kind
