"""How the stored-duplicates scan slices its range (``models.messages.next_slice``)."""

from __future__ import annotations

import datetime as dt

from models.messages import DUPLICATES_SLICE_ROWS, DUPLICATES_SLICE_SECS, next_slice

SECOND = dt.timedelta(seconds=1)


def slices_over(span: dt.timedelta, rows_per_sec: float) -> int:
    """The commands one scan of ``span`` makes over messages stored at a steady rate."""
    step, covered, commands = DUPLICATES_SLICE_SECS * SECOND, dt.timedelta(0), 0
    while covered < span:
        step = min(step, span - covered)
        covered += step
        commands += 1
        step = next_slice(step, int(step / SECOND * rows_per_sec))
    return commands


def test_a_quiet_hour_is_read_in_a_few_commands() -> None:
    # Fixed ten-second slices: 360 commands for a fresh process's first run.
    assert slices_over(dt.timedelta(hours=1), 0) == 6


def test_a_busy_range_is_read_in_slices_of_about_the_target_rows() -> None:
    assert next_slice(10 * SECOND, DUPLICATES_SLICE_ROWS * 2) == 5 * SECOND
    assert next_slice(10 * SECOND, DUPLICATES_SLICE_ROWS) == 10 * SECOND
    # 100 rows a second: the first slice of ten seconds, then 118 of five (500 rows each).
    assert slices_over(dt.timedelta(minutes=10), 100) == 1 + 118


def test_a_slice_grows_at_most_fourfold_and_never_under_a_second() -> None:
    assert next_slice(10 * SECOND, 0) == 40 * SECOND
    assert next_slice(10 * SECOND, 1) == 40 * SECOND
    assert next_slice(2 * SECOND, 100 * DUPLICATES_SLICE_ROWS) == SECOND
