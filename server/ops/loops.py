"""What every background loop of a process asks before going round again.

A loop stops when its owner's ``stop()`` sets its flag, and also when its task is being
cancelled without ``stop()`` (an event loop closing under it). The second needs asking because
PyMongo's async I/O can turn a cancellation that lands mid-operation into a PyMongoError, which
a loop that survives store failures would catch and go round again — forever, holding the event
loop's shutdown (seen in tests: a module's loop teardown waited on such a task).
"""

from __future__ import annotations

import asyncio


def cancelling() -> bool:
    """Whether the current task has been asked to stop (``Task.cancel()``)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0
