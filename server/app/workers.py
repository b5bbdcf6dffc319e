"""Pre-forked workers (``igsync serve --workers N``): one port, N processes, one supervisor.

The parent binds the listening sockets and shares the metrics directory
(:func:`server.ops.metrics.share_between_workers`), then forks N workers. Each worker builds
its own event loop, store clients and core *after* the fork — a client made before a fork
would share its sockets between processes — and accepts on the inherited sockets (the kernel
hands each new connection to one of them). Nothing else is shared: workers talk through
MongoDB and Redis exactly as separate machines do.

The parent only supervises. SIGTERM or SIGINT is forwarded to every worker; each drains as a
single process does (:mod:`server.app.lifecycle`: stop accepting, finish the requests in
flight, close sockets with 1001, close the stores) and the parent exits once all have. A
worker that dies on its own is replaced, at most once per ``RESPAWN_MIN_SECS`` per slot, so a
worker that cannot start does not spin.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import Callable

from tornado.netutil import bind_sockets

from config import Settings
from server.ops.metrics import share_between_workers, worker_exited

log = logging.getLogger("igsync.server")

RESPAWN_MIN_SECS = 1.0
AUTO = "auto"


def worker_count(value: str | int) -> int:
    """``auto`` (one per core) or a whole number of at least 1."""
    if value == AUTO:
        return os.cpu_count() or 1
    count = int(value)
    if count < 1:
        raise ValueError("--workers must be at least 1 (or auto)")
    return count


# Runs one worker on the inherited sockets (its index; 0 prints the banner); returns its exit code.
WorkerMain = Callable[[list[socket.socket], int], int]


class Supervisor:
    """Forks the workers, forwards stop signals, replaces a worker that dies on its own."""

    def __init__(self, settings: Settings, count: int, worker_main: WorkerMain) -> None:
        self.settings = settings
        self.count = count
        self.worker_main = worker_main
        self.children: dict[int, int] = {}  # pid → worker index
        self.started_at: dict[int, float] = {}  # worker index → last start
        self.stopping = False

    def run(self) -> int:
        """Bind, fork, supervise until every worker has exited after a stop; the exit code."""
        sockets = bind_sockets(self.settings.port, self.settings.host)
        metrics_dir = tempfile.mkdtemp(prefix="igsync-metrics-")
        share_between_workers(metrics_dir)
        previous = {sig: signal.signal(sig, self._on_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            for index in range(self.count):
                self._spawn(index, sockets)
            log.info("igsync supervisor: %d workers on %s:%s", self.count, self.settings.host, self.settings.port)
            return self._supervise(sockets)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            for sock in sockets:
                sock.close()
            shutil.rmtree(metrics_dir, ignore_errors=True)

    def _spawn(self, index: int, sockets: list[socket.socket]) -> None:
        self.started_at[index] = time.monotonic()
        pid = os.fork()
        if pid == 0:  # the worker
            code = 1
            try:
                for sig in (signal.SIGTERM, signal.SIGINT):
                    signal.signal(sig, signal.SIG_DFL)
                code = self.worker_main(sockets, index)
            except BaseException:
                log.exception("worker %d failed", index)
            finally:
                os._exit(code)
        self.children[pid] = index
        if self.stopping:  # a stop arrived while forking: this worker missed the forwarded signal
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    def _on_stop(self, signum: int, frame: object) -> None:
        # A signal handler: only forward and flag (os.wait in _supervise resumes by itself).
        self.stopping = True
        for pid in list(self.children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    def _supervise(self, sockets: list[socket.socket]) -> int:
        failed = False
        while self.children:
            pid, status = os.wait()
            index = self.children.pop(pid, None)
            if index is None:
                continue
            worker_exited(pid)
            code = os.waitstatus_to_exitcode(status)
            if self.stopping:
                # -SIGTERM: a worker still starting (its drain handler not yet installed) took
                # the forwarded signal's default action; it had served nothing, so lost nothing.
                failed = failed or code not in (0, -signal.SIGTERM)
                continue
            log.warning("worker %d (pid %d) exited with %s; starting a new one", index, pid, code)
            # Not faster than once a second per slot: a worker that cannot start must not spin.
            wait = self.started_at[index] + RESPAWN_MIN_SECS - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            if not self.stopping:
                self._spawn(index, sockets)
        log.info("igsync supervisor: all workers stopped")
        return 1 if failed else 0
