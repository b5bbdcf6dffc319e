"""The garbage-collector tuning of server processes (server/ops/runtime.py)."""

from __future__ import annotations

import gc

from server.ops.metrics import Metrics
from server.ops.runtime import GC_THRESHOLDS, tune_gc


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
