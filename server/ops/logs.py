"""Logging setup: human text by default, one JSON object per line with ``IGSYNC_LOG_FORMAT=json``.

Code logs with ``%s`` arguments and passes the fields an operator filters on as
``extra={...}`` (see ``STRUCTURED_FIELDS``; :func:`item_fields` builds them for a webhook
item); the JSON formatter lifts them to top-level keys, the text formatter keeps the
human sentence. ``event`` names the kind of line: ``webhook_item`` (one per webhook
item), ``http_request`` (the access log), ``store_error``…

Callers never log a token, a signature or a query string. As a second line of defence
every handler installed here formats through :class:`Redactor`, which replaces the
configured secrets and anything shaped like a bearer token, an inbox/admin/internal
token or a ``sha256=`` signature with ``<redacted>``.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import sys
import time
from collections.abc import Iterable
from typing import Any

import orjson

from config import Settings
from models.timeutil import from_epoch_ms, iso

STRUCTURED_FIELDS = (
    "event",
    "direction",
    "dedup_layer",
    "channel_id",
    "conversation_id",
    "mid",
    "message_id",
    "duration_ms",
    "status",
    "method",
    "path",
    "handler",
    "remote_ip",
    "outcome",
    "kind",
    "reason",
)

REDACTED = "<redacted>"
# Shapes of credentials, whatever their value: Authorization values, the project's token
# formats (models.tokens / server.devsecrets), HMAC signatures, token query parameters.
_CREDENTIAL_SHAPES = re.compile(
    r"(?i:bearer)\s+[^\s\"',;]+"
    r"|\b(?:igs|adm|int)_[A-Za-z0-9_\-]{16,}"
    r"|sha256=[0-9a-fA-F]{16,}"
    r"|(?i:(?:access_token|hub\.verify_token|token)=)[^\s&\"']+"
)
_MIN_SECRET_CHARS = 6
# A line can only hold a credential shape if it contains one of these (lower case).
_SHAPE_TRIGGERS = ("bearer", "igs_", "adm_", "int_", "sha256=", "token=")


class Redactor:
    """Replaces known secret values and credential-shaped strings in a formatted line.

    Runs on every line, so the common case — nothing to redact — is a few substring
    tests (C speed); the regular expressions run only on lines that contain a trigger.
    """

    def __init__(self, secrets: Iterable[str | None] = ()) -> None:
        self._secrets = sorted({s for s in secrets if s and len(s) >= _MIN_SECRET_CHARS}, key=len, reverse=True)

    def __call__(self, line: str) -> str:
        """``line`` with every known secret replaced."""
        for secret in self._secrets:
            if secret in line:
                line = line.replace(secret, REDACTED)
        lowered = line.lower()
        if any(trigger in lowered for trigger in _SHAPE_TRIGGERS):
            line = _CREDENTIAL_SHAPES.sub(_keep_name, line)
        return line


def _keep_name(match: re.Match[str]) -> str:
    text = match.group(0)
    for prefix in ("bearer", "sha256=", "access_token=", "hub.verify_token=", "token="):
        if text.lower().startswith(prefix):
            return text[: len(prefix)] + ("" if prefix.endswith("=") else " ") + REDACTED
    return REDACTED


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        """One JSON object per line: time, level, logger, message and the record's fields."""
        out: dict[str, Any] = {
            "ts": iso(from_epoch_ms(record.created * 1000)),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key in STRUCTURED_FIELDS:
            value = record.__dict__.get(key)
            if value is not None:
                out[key] = value if isinstance(value, (int, float, bool)) else str(value)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(out).decode()


class RedactingFormatter(logging.Formatter):
    """Formats with ``inner``, then redacts the whole line (message, fields, traceback)."""

    def __init__(self, inner: logging.Formatter, redactor: Redactor) -> None:
        super().__init__()
        self.inner = inner
        self.redactor = redactor

    def format(self, record: logging.LogRecord) -> str:
        """The inner format, redacted."""
        return self.redactor(self.inner.format(record))


def secret_values(settings: Settings) -> list[str]:
    """Every secret value of ``settings`` (the fields marked secret), for :class:`Redactor`."""
    values: list[str] = []
    for f in dataclasses.fields(settings):
        if f.metadata.get("secret"):
            value = getattr(settings, f.name)
            values.extend(value if isinstance(value, tuple) else [value] if value else [])
    return values


HANDLER_NAME = "igsync"
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def formatter(fmt: str = "text", secrets: Iterable[str | None] = ()) -> logging.Formatter:
    """The log formatter for ``fmt`` (json or text), redacting ``secrets``."""
    inner: logging.Formatter = JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT)
    return RedactingFormatter(inner, Redactor(secrets))


def configure(fmt: str = "text", level: str = "INFO", stream: Any = None, secrets: Iterable[str | None] = ()) -> None:
    """Send igsync's logs to ``stream`` in ``fmt`` at ``level``, redacted."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(formatter(fmt, secrets))
    handler.set_name(HANDLER_NAME)
    root = logging.getLogger()
    # Replace only our own handler (configure runs again once dev secrets are known), and
    # leave handlers others installed (a test session's log capture) in place.
    for old in list(root.handlers):
        if old.get_name() == HANDLER_NAME:
            root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # Tornado's own access log is replaced by the app's log_function (no query strings).
    logging.getLogger("tornado.access").setLevel(logging.WARNING)
    # pymongo's DEBUG command log prints whole documents (token hashes, channel tokens).
    for noisy in ("pymongo", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def item_fields(
    *,
    kind: str,
    outcome: str,
    started: float | None = None,
    direction: str | None = None,
    dedup_layer: str | None = None,
    channel_id: Any = None,
    conversation_id: Any = None,
    mid: str | None = None,
    message_id: Any = None,
    reason: str | None = None,
) -> dict[str, Any]:
    """The ``extra`` of a ``webhook_item`` line; ``duration_ms`` since ``started`` (``time.perf_counter()``)."""
    fields: dict[str, Any] = {"event": "webhook_item", "kind": kind, "outcome": outcome}
    if started is not None:
        fields["duration_ms"] = round((time.perf_counter() - started) * 1000, 3)
    for key, value in (
        ("direction", direction),
        ("dedup_layer", dedup_layer),
        ("channel_id", channel_id),
        ("conversation_id", conversation_id),
        ("mid", mid),
        ("message_id", message_id),
        ("reason", reason),
    ):
        if value is not None:
            fields[key] = str(value)
    return fields
