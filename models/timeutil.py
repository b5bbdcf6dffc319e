"""Time helpers: one clock, one wire format (ISO-8601 UTC, milliseconds, ``Z``)."""

from __future__ import annotations

import datetime as dt

UTC = dt.UTC


def utcnow() -> dt.datetime:
    """Now, truncated to milliseconds — what MongoDB stores, so equality survives a round trip."""
    now = dt.datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def iso(value: dt.datetime | None) -> str | None:
    """ISO-8601 in UTC with milliseconds and ``Z``; naive datetimes are taken as UTC."""
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    value = value.astimezone(UTC)
    return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"


def from_epoch_ms(ms: int | float) -> dt.datetime:
    """A UTC datetime from epoch milliseconds (Meta's timestamps)."""
    return dt.datetime.fromtimestamp(int(ms) / 1000, tz=UTC)


def parse_iso(text: str) -> dt.datetime:
    """Parse an ISO-8601 time (``Z`` or offset); raise ValueError when it is not one.

    A time that exists only in its own offset (``0001-01-01T00:00:00+01:00`` is before year 1
    in UTC) is not one either: converting it overflows."""
    value = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise ValueError(f"{text!r} is out of range in UTC") from None


def aware(value: dt.datetime | None) -> dt.datetime | None:
    """PyMongo hands back naive UTC datetimes unless tz_aware; make them explicit."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)
