"""Logging setup: human text by default, one JSON object per line with ``IGSYNC_LOG_FORMAT=json``.

Code logs with ``%s`` arguments and passes the fields an operator filters on as
``extra={...}`` (see ``STRUCTURED_FIELDS``); the JSON formatter lifts them to top-level
keys. Nothing here ever sees a token: callers never log one.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import orjson

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
    "outcome",
    "kind",
    "reason",
)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
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


def configure(fmt: str = "text", level: str = "INFO", stream: Any = None) -> None:
    handler = logging.StreamHandler(stream or sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # Tornado's own access log is replaced by the app's log_function (no query strings).
    logging.getLogger("tornado.access").setLevel(logging.WARNING)
    for noisy in ("pymongo", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
