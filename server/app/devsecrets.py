"""Development secrets: generated once into the data directory, reused on every start.

Only used in embedded mode, where igsync has no configuration. The file is created with
mode 0600 and lives under ``IGSYNC_DATA_DIR`` (git-ignored). Values given in the
environment always win over the file.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import Any

from config import Settings

SECRETS_FILE = "secrets.json"


def secrets_path(data_dir: str | Path) -> Path:
    """Where the development secrets of a data directory are kept."""
    return Path(data_dir).resolve() / SECRETS_FILE


def load_or_create(data_dir: str | Path) -> dict[str, Any]:
    """The development secrets of a data directory, created on first use."""
    path = secrets_path(data_dir)
    if path.exists():
        return json.loads(path.read_text())
    path.parent.mkdir(parents=True, exist_ok=True)
    values = {
        "app_secret": secrets.token_hex(32),
        "verify_token": secrets.token_urlsafe(24),
        "admin_token": "adm_" + secrets.token_urlsafe(32),
        "internal_tokens": ["int_" + secrets.token_urlsafe(32)],
    }
    save(data_dir, values)
    return values


def save(data_dir: str | Path, values: dict[str, Any]) -> None:
    """Write the development secrets, readable by the owner only."""
    path = secrets_path(data_dir)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(values, fh, indent=2)


def apply(settings: Settings, values: dict[str, Any]) -> Settings:
    """Fill the secrets the environment did not give from the dev secrets."""
    changes: dict[str, Any] = {}
    for name in ("app_secret", "verify_token", "admin_token"):
        if not getattr(settings, name) and values.get(name):
            changes[name] = values[name]
    if not settings.internal_tokens and values.get("internal_tokens"):
        changes["internal_tokens"] = tuple(values["internal_tokens"])
    return settings.replace(**changes) if changes else settings
