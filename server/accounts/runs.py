"""The background worker of history runs: imports and gap repairs, one at a time per process.

Owns :class:`HistoryWorker`, a :class:`~server.ops.loops.PollingLoop` that claims a queued run
(or one whose process stopped: its lease ran out), executes it with
:class:`~server.accounts.history.HistoryImporter` and publishes its progress to the channel's
sockets (``history_import``, at most once a second and at the end). Several processes share
the runs through their leases; each account's calls stay within Meta's rate because a run has
one owner at a time.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from models.store import Store
from server.accounts.history import HistoryImporter
from server.inbox import events as ev
from server.ops.loops import PollingLoop

log = logging.getLogger("igsync.history")

# Progress reaches the sockets at most this often while a run goes (always at its end).
PROGRESS_EVERY_SECS = 1.0


class HistoryWorker:
    def __init__(
        self,
        store: Store,
        importer: HistoryImporter,
        publish: Callable[[list[ev.Event]], Awaitable[None]],
        *,
        poll_secs: float,
        lease_secs: float,
        enabled: bool = True,
    ) -> None:
        # Off: this process runs no history in the background (the CLI's run_here still works).
        self.enabled = enabled
        self.store = store
        self.importer = importer
        self.publish = publish
        self.lease_secs = lease_secs
        self.owner = f"history-{uuid.uuid4().hex[:12]}"
        self.loop = PollingLoop(
            "history worker", self.run_once, poll_secs=poll_secs, stop_wait_secs=lease_secs, log=log
        )

    async def start(self) -> None:
        """Start looking for runs."""
        if self.enabled:
            self.loop.start()

    async def stop(self) -> None:
        """Stop after the conversation in progress (its run is resumed by whoever takes it)."""
        await self.loop.stop()

    def wake(self) -> None:
        """A run was queued: look now."""
        self.loop.wake()

    async def run_once(self, run_id: str | None = None) -> bool:
        """Claim one run (``run_id``, or any) and execute it; False when there was none."""
        run = await self.store.history_runs.claim(self.owner, self.lease_secs, run_id)
        if run is None:
            return False
        log.info("history: run %s started (mode=%s channel=%s)", run["_id"], run["mode"], run["channel_id"])
        await self.importer.execute(run, self._announcer(run), should_stop=lambda: self.loop.stopping)
        return True

    async def run_here(
        self, run_id: str, on_progress: Callable[[dict[str, Any]], Awaitable[None]]
    ) -> dict[str, Any] | None:
        """Claim and execute one run in this process (the CLI), reporting progress as it goes
        (and to the channel's sockets); None when another process holds it."""
        run = await self.store.history_runs.claim(self.owner, self.lease_secs, run_id)
        if run is None:
            return None
        announce = self._announcer(run)

        async def both(progress: dict[str, Any]) -> None:
            await on_progress(progress)
            await announce(progress)

        return await self.importer.execute(run, both)

    def _announcer(self, run: dict[str, Any]) -> Callable[[dict[str, Any]], Awaitable[None]]:
        last = 0.0

        async def announce(progress: dict[str, Any]) -> None:
            nonlocal last
            now = time.monotonic()
            if progress["state"] == "running" and now - last < PROGRESS_EVERY_SECS:
                return
            last = now
            await self.publish([ev.history_import(run["channel_id"], progress)])

        return announce
