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

Only ``igsync serve`` processes tune the collector (:mod:`server.app.lifecycle`); tests and
tools that build a core in their own process keep the interpreter's defaults.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from typing import Any

from server.ops.metrics import GC_GENERATIONS, Metrics

# (young, middle, old) collection thresholds; see the module docstring.
GC_THRESHOLDS = (100_000, 50, 100)


def tune_gc(metrics: Metrics) -> Callable[[], None]:
    """Set :data:`GC_THRESHOLDS` and measure every collection's pause; returns the undo."""
    previous = gc.get_threshold()
    gc.set_threshold(*GC_THRESHOLDS)
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
        if on_collection in gc.callbacks:
            gc.callbacks.remove(on_collection)
        gc.set_threshold(*previous)

    return undo
