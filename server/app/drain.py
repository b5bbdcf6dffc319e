"""Graceful drain: which HTTP requests this process is serving, and whether it takes new ones.

Owned by the core (``core.gate``); every JSON handler enters it in ``prepare`` and leaves it in
``on_finish``. On SIGTERM :class:`~server.app.lifecycle.ServerProcess` closes the gate (new
requests answer 503 ``shutting_down`` with ``Connection: close``, so Meta and clients retry
elsewhere), waits for the requests in flight — with their stores still open — up to
``IGSYNC_SHUTDOWN_DRAIN_SECS``, and only then closes sockets and stores.
"""

from __future__ import annotations

import asyncio
import contextlib


class RequestGate:
    """Counts requests in flight; once closed, refuses new ones."""

    def __init__(self) -> None:
        self.in_flight = 0
        self.closing = False
        self._idle = asyncio.Event()
        self._idle.set()

    def enter(self) -> bool:
        """A request starts; False (refuse it) once the process is draining."""
        if self.closing:
            return False
        self.in_flight += 1
        self._idle.clear()
        return True

    def leave(self) -> None:
        """A request that entered has finished."""
        self.in_flight -= 1
        if self.in_flight <= 0:
            self.in_flight = 0
            self._idle.set()

    def close(self) -> None:
        """Refuse new requests from now on."""
        self.closing = True

    async def drained(self, timeout_secs: float) -> bool:
        """Wait until no request is in flight, at most ``timeout_secs``; True when none is."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), timeout_secs)
        return self.in_flight == 0
