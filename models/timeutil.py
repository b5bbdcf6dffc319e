"""Time helpers: one clock, one wire format (ISO-8601 UTC, milliseconds, ``Z``)."""

from __future__ import annotations

import datetime as dt
import re

UTC = dt.UTC


def utcnow() -> dt.datetime:
    """Now, truncated to milliseconds — what MongoDB stores, so equality survives a round trip."""
    now = dt.datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def iso(value: dt.datetime | None) -> str | None:
    """ISO-8601 in UTC with milliseconds and ``Z``; naive datetimes are taken as UTC."""
    if value is None:
        return None
    if value.tzinfo is not UTC:  # (on the hot path: a dozen per webhook, so the C formatter)
        value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    return value.replace(tzinfo=None).isoformat(timespec="milliseconds") + "Z"


def from_epoch_ms(ms: int | float) -> dt.datetime:
    """A UTC datetime from epoch milliseconds (Meta's timestamps)."""
    return dt.datetime.fromtimestamp(int(ms) / 1000, tz=UTC)


def parse_iso(text: str) -> dt.datetime:
    """Parse an RFC 3339 / ISO-8601 time (``Z``/``z`` or an offset; none means UTC); raise
    ValueError when it is not one.

    RFC 3339 allows a lowercase ``t``/``z`` and a leap second (``23:59:60``, read as
    ``23:59:59``). A valid time whose instant falls outside what UTC datetimes can hold
    (``0001-01-01T00:00:00+01:00`` is before year 1 in UTC) is the earliest or latest
    representable instant: as a filter bound it means "everything" or "nothing"."""
    normalized = _LEAP_SECOND.sub(r"\1:59", _T_OR_Z.sub(lambda m: m.group(0).upper(), text))
    value = dt.datetime.fromisoformat(normalized.replace("Z", "+00:00"))
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    try:
        return value.astimezone(UTC)
    except OverflowError:
        offset = value.utcoffset() or dt.timedelta(0)
        return (dt.datetime.min if offset > dt.timedelta(0) else dt.datetime.max).replace(tzinfo=UTC)


# The date/time separator and a trailing Z, which RFC 3339 allows in lowercase.
_T_OR_Z = re.compile(r"(?<=^\d{4}-\d{2}-\d{2})t|z$")
_LEAP_SECOND = re.compile(r"(T\d{2}:\d{2}):60")


def aware(value: dt.datetime | None) -> dt.datetime | None:
    """PyMongo hands back naive UTC datetimes unless tz_aware; make them explicit."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)
