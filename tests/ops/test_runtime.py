"""The garbage-collector tuning of server processes (server/ops/runtime.py)."""

from __future__ import annotations

import asyncio
import gc

from server.ops.metrics import Metrics
from server.ops.runtime import GC_THRESHOLDS, tune_gc
from tests.support.helpers import wait_for


def _pauses(metrics: Metrics, generation: str) -> float:
    return metrics.registry.get_sample_value("igsync_gc_pause_seconds_count", {"generation": generation}) or 0.0


def test_tune_gc_sets_the_thresholds_measures_pauses_and_undoes() -> None:
    metrics = Metrics(process_metrics=False)
    before = gc.get_threshold()
    undo = tune_gc(metrics)
    try:
        assert gc.get_threshold() == GC_THRESHOLDS
        gc.collect()  # a full collection, measured
        assert _pauses(metrics, "old") >= 1
    finally:
        undo()
    assert gc.get_threshold() == before
    counted = _pauses(metrics, "old")
    gc.collect()
    assert _pauses(metrics, "old") == counted, "no longer measured after undo"


async def test_the_young_generation_is_also_collected_on_a_timer() -> None:
    """The allocation counter can stay low while the young generation fills with long-lived
    objects (server/ops/runtime.py): a timer collects it regardless."""
    metrics = Metrics(process_metrics=False)
    undo = tune_gc(metrics, asyncio.get_running_loop(), young_every_secs=0.02)
    try:
        await wait_for(lambda: _pauses(metrics, "young") >= 3)
    finally:
        undo()
