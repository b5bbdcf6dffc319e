"""The one wire format for times (``models.timeutil.iso``): pure-function checks."""

from __future__ import annotations

import datetime as dt

from bson.tz_util import utc as bson_utc

from models.timeutil import iso, parse_iso


def test_every_kind_of_datetime_is_written_in_utc_with_milliseconds_and_z() -> None:
    instant = dt.datetime(2026, 12, 5, 17, 3, 4, 567891, tzinfo=dt.UTC)
    assert iso(instant) == "2026-12-05T17:03:04.567Z"  # truncated, never rounded up
    assert iso(instant.replace(tzinfo=None)) == "2026-12-05T17:03:04.567Z"  # naive = UTC
    assert iso(instant.replace(tzinfo=bson_utc)) == "2026-12-05T17:03:04.567Z"  # as PyMongo reads it
    plus_three = dt.timezone(dt.timedelta(hours=3))
    assert iso(instant.astimezone(plus_three)) == "2026-12-05T17:03:04.567Z"
    assert iso(dt.datetime(2026, 1, 2, tzinfo=dt.UTC)) == "2026-01-02T00:00:00.000Z"
    assert iso(dt.datetime(5, 1, 1, tzinfo=dt.UTC)) == "0005-01-01T00:00:00.000Z"  # four-digit year
    assert iso(None) is None
    assert parse_iso(iso(instant) or "") == instant.replace(microsecond=567000)
