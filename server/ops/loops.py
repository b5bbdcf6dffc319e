"""What every background loop of a process asks before going round again.

A loop stops when its owner's ``stop()`` sets its flag, and also when its task is being
cancelled without ``stop()`` (an event loop closing under it). The second needs asking because
PyMongo's async I/O can turn a cancellation that lands mid-operation into a PyMongoError, which
a loop that survives store failures would catch and go round again — forever, holding the event
loop's shutdown (seen in tests: a module's loop teardown waited on such a task).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from pymongo.errors import PyMongoError


def cancelling() -> bool:
    """Whether the current task has been asked to stop (``Task.cancel()``)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


class PollingLoop:
    """One background loop of a process: ``work()`` again and again — at once after a round
    that did something, else after ``poll_secs`` or a :meth:`wake` — until :meth:`stop`.

    Store failures and bugs end a round, never the loop (the work is durable: it is found
    again next round). Stopped by asking (a flag and a wake), then a bounded wait, then a
    cancel: a cancellation that lands in PyMongo's server selection can leave its topology
    lock held, after which the client's close() waits forever.
    """

    def __init__(
        self,
        name: str,
        work: Callable[[], Awaitable[bool]],
        *,
        poll_secs: float,
        stop_wait_secs: float,
        log: logging.Logger,
    ) -> None:
        self.name = name
        self.work = work
        self.poll_secs = poll_secs
        self.stop_wait_secs = stop_wait_secs
        self.log = log
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    def start(self) -> None:
        """Start the loop (its first round runs now)."""
        self._stopping = False
        self._task = asyncio.create_task(self._loop(), name=self.name)

    async def stop(self) -> None:
        """Ask the loop to end after its round; cancel it if the round outlasts the wait."""
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            _, busy = await asyncio.wait([self._task], timeout=self.stop_wait_secs)
            for task in busy:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        self._task = None

    def wake(self) -> None:
        """Go round now instead of at the next poll."""
        self._wake.set()

    @property
    def stopping(self) -> bool:
        """Whether the loop was asked to stop (long rounds check it between steps)."""
        return self._stopping or cancelling()

    async def _loop(self) -> None:
        while not self.stopping:
            # Cleared before the round: a wake during it is kept for the wait below.
            self._wake.clear()
            try:
                if await self.work():
                    continue
            except PyMongoError as exc:
                self.log.warning("%s: MongoDB failed (%s); trying again", self.name, type(exc).__name__)
            except Exception:
                self.log.exception("%s: a round failed unexpectedly", self.name)
            await wait_for_wake(self._wake, self.poll_secs)


async def wait_for_wake(wake: asyncio.Event, poll_secs: float | None) -> None:
    """Wait until ``wake`` is set, or ``poll_secs`` went by (None: no timeout)."""
    # asyncio.timeout, not wait_for: Python 3.11's wait_for can swallow a cancellation that
    # lands as its timeout fires, and the loop waiting here would then never end.
    try:
        async with asyncio.timeout(poll_secs):
            await wake.wait()
    except TimeoutError:
        pass


class PoolIdleWait:
    """How the idle loops of a worker pool (sends, media) wait for work: one of them polls
    (waits ``poll_secs``, then looks at the queue), the others wait for ``wake`` alone.

    N loops polling one queue read it N times a poll and find it empty as one (an idle
    process was ~16 store commands a second, most of them this). The polling role is held
    only while waiting, so it passes to whichever loop is idle: a poller that then finds
    work leaves it free, and the peers its wake sets going (a loop that took work wakes the
    rest: there may be more, queued by another process, which no wake here announces) take
    it up as they find the queue empty. While every loop is busy nobody polls — each looks
    at the queue again as it finishes.
    """

    def __init__(self, wake: asyncio.Event, poll_secs: float) -> None:
        self.wake = wake
        self.poll_secs = poll_secs
        self._polling = False

    async def wait(self) -> None:
        """Wait as this pool's poller when no other idle loop is, else for a wake."""
        # Checked and taken with no await between: loops of one event loop cannot both take it.
        if self._polling:
            await self.wake.wait()
            return
        self._polling = True
        try:
            await wait_for_wake(self.wake, self.poll_secs)
        finally:
            self._polling = False
