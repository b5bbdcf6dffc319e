"""What a server process asks of the Python runtime: the garbage collector's thresholds, and
its pauses measured (``igsync_gc_pause_seconds``).

Why: CPython's cyclic collector stops the event loop while it walks every tracked object of
the generations it collects. A process with 10 000 WebSockets holds about 1.1 million of them.
With the default thresholds (700, 10, 10) the short-lived objects of event delivery — queued
frames, write futures, timers — were still alive at the frequent young collections, got
promoted, and made a *full* collection due every 10–25 s under fan-out load: 0.7–0.8 s with
the loop stopped, every socket's next frame late by that much (bench/fanout.py at 10 000
sockets: the p99 was one such pause). Collecting the young generation every 100 000
allocations instead, those objects die young, and the full collection waits for CPython's
own rule (the long-lived set grew by a quarter: sockets connecting), no longer for the churn of
delivery. A young collection then costs tens of milliseconds at most.

The counter that triggers a young collection lies in a long-running server, though: it counts
allocations minus *all* deallocations, so an old object freed (a cache entry replaced, a
connection's buffers recycled) pays for a new one that stays. The young generation then holds
everything long-lived made since its last collection, the counter barely moves, and when it
finally trips the "young" collection walks most of the heap: 100–250 ms with the loop stopped,
twice in the first 13 minutes of ``bench/soak.py`` at 51 webhooks/s (docs/performance.md,
"Soak"). So a timer also collects the young generation every ``YOUNG_COLLECTION_EVERY_SECS``:
it then holds about a second's worth of survivors (no collection over 5 ms in the soak at that
load); what survives moves to the middle generation, collected at every 50th of those (about
every 50 s), so it holds at most 50 seconds' survivors.

Only ``igsync serve`` processes tune the collector (:mod:`server.app.lifecycle`); tests and
tools that build a core in their own process keep the interpreter's defaults.
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Callable
from typing import Any

from server.ops.metrics import GC_GENERATIONS, Metrics

# (young, middle, old) collection thresholds; see the module docstring.
GC_THRESHOLDS = (100_000, 50, 100)
# The young generation is also collected on this timer (see the module docstring).
YOUNG_COLLECTION_EVERY_SECS = 1.0


def collect_young_every(
    loop: asyncio.AbstractEventLoop, secs: float = YOUNG_COLLECTION_EVERY_SECS
) -> Callable[[], None]:
    """Collect the young generation every ``secs`` on ``loop`` (see the module docstring);
    returns the undo."""
    timer: list[asyncio.TimerHandle] = []

    def collect_young() -> None:
        gc.collect(0)
        timer[:] = [loop.call_later(secs, collect_young)]

    timer.append(loop.call_later(secs, collect_young))

    def undo() -> None:
        for handle in timer:
            handle.cancel()

    return undo


def tune_gc(
    metrics: Metrics,
    loop: asyncio.AbstractEventLoop | None = None,
    *,
    young_every_secs: float = YOUNG_COLLECTION_EVERY_SECS,
) -> Callable[[], None]:
    """Set :data:`GC_THRESHOLDS`, measure every collection's pause and, given the process's
    ``loop``, collect the young generation every ``young_every_secs``; returns the undo."""
    previous = gc.get_threshold()
    gc.set_threshold(*GC_THRESHOLDS)
    stop_timer = collect_young_every(loop, young_every_secs) if loop is not None else None
    started = [0.0]
    histograms = [metrics.gc_pauses.labels(generation=name) for name in GC_GENERATIONS]

    def on_collection(phase: str, info: dict[str, Any]) -> None:
        # Runs inside the collector: no allocation-heavy work here.
        if phase == "start":
            started[0] = time.perf_counter()
        else:
            histograms[info["generation"]].observe(time.perf_counter() - started[0])

    gc.callbacks.append(on_collection)

    def undo() -> None:
        if stop_timer is not None:
            stop_timer()
        if on_collection in gc.callbacks:
            gc.callbacks.remove(on_collection)
        gc.set_threshold(*previous)

    return undo
