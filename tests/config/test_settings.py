"""The settings object: defaults, parsing, one-line errors, production refusing dev secrets."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest

from config import ConfigError, Settings, describe
from tests.support.helpers import ROOT

PROD = {
    "IGSYNC_MONGO_URL": "mongodb://db.internal:27017/?replicaSet=rs0",
    "IGSYNC_REDIS_URL": "redis://cache.internal:6379/0",
    "IGSYNC_APP_SECRET": "a" * 32,
    "IGSYNC_VERIFY_TOKEN": "v" * 24,
    "IGSYNC_ADMIN_TOKEN": "d" * 32,
    "IGSYNC_INTERNAL_TOKENS": "i" * 32 + ", " + "j" * 32,
}


def test_defaults_match_the_contract() -> None:
    s = Settings.from_env({})
    assert (s.host, s.port, s.mongo_db, s.data_dir) == ("127.0.0.1", 8080, "igsync", "./var")
    assert (s.dedup_ttl_secs, s.dedup_window_secs, s.ws_ping_secs, s.ws_queue_max) == (60, 30, 25, 1000)
    assert s.max_body_bytes == 1_048_576 and s.log_format == "text" and s.metrics_token is None
    assert s.graph_api_url == "https://graph.instagram.com" and s.trigger_stream == "igsync:triggers"
    assert not s.production and s.embedded_mongo and s.embedded_redis


def test_settings_are_frozen_and_every_field_documented() -> None:
    s = Settings()
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.port = 1  # type: ignore[misc]
    rows = describe()
    assert all(name.startswith("IGSYNC_") and help_text for name, _, help_text in rows)


def test_production_parses_every_value() -> None:
    s = Settings.from_env(
        {
            **PROD,
            "IGSYNC_PORT": "9000",
            "IGSYNC_DEDUP_WINDOW_SECS": "45",
            "IGSYNC_LOG_FORMAT": "json",
            "IGSYNC_CHANNEL_CACHE_SECS": "2.5",
        }
    )
    assert s.production and s.port == 9000 and s.dedup_window_secs == 45 and s.channel_cache_secs == 2.5
    assert s.internal_tokens == ("i" * 32, "j" * 32)
    assert "a" * 32 not in str(s.redacted())


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        ({"IGSYNC_PORT": "eighty"}, "IGSYNC_PORT must be a number"),
        ({"IGSYNC_PORT": "70000"}, "IGSYNC_PORT must be between"),
        ({"IGSYNC_DEDUP_TTL_SECS": "0"}, "IGSYNC_DEDUP_TTL_SECS must be a positive"),
        ({"IGSYNC_LOG_FORMAT": "xml"}, "IGSYNC_LOG_FORMAT must be"),
        ({"IGSYNC_MONGO_URL": "postgres://x"}, "IGSYNC_MONGO_URL must start"),
        ({"IGSYNC_GRAPH_API_URL": "ftp://x"}, "IGSYNC_GRAPH_API_URL"),
    ],
)
def test_a_wrong_value_is_one_clear_line(env: dict, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env(env)
    assert fragment in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize(
    "missing", ["IGSYNC_APP_SECRET", "IGSYNC_VERIFY_TOKEN", "IGSYNC_ADMIN_TOKEN", "IGSYNC_INTERNAL_TOKENS"]
)
def test_production_refuses_to_start_without_real_secrets(missing: str) -> None:
    env = {k: v for k, v in PROD.items() if k != missing}
    with pytest.raises(ConfigError, match=missing):
        Settings.from_env(env)
    with pytest.raises(ConfigError, match="too short"):
        Settings.from_env({**PROD, missing: "s3cr3t"})
    with pytest.raises(ConfigError, match="placeholder"):
        Settings.from_env({**PROD, missing: "replace-with-a-random-value-0123"})


def test_serve_with_a_wrong_value_exits_with_one_line() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "server", "serve"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "IGSYNC_PORT": "eighty"},
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == "igsync: configuration error: IGSYNC_PORT must be a number, got 'eighty'"


def test_serve_in_production_without_secrets_refuses() -> None:
    env = {
        "PATH": "/usr/bin:/bin",
        "IGSYNC_MONGO_URL": PROD["IGSYNC_MONGO_URL"],
        "IGSYNC_REDIS_URL": PROD["IGSYNC_REDIS_URL"],
    }
    result = subprocess.run(
        [sys.executable, "-m", "server", "serve"], cwd=ROOT, capture_output=True, text=True, env=env, timeout=60
    )
    assert result.returncode == 2
    assert "IGSYNC_APP_SECRET is required" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_deploy_files_describe_two_replicas_on_real_stores() -> None:
    import yaml

    compose = yaml.safe_load((ROOT / "deploy" / "docker-compose.yml").read_text())
    services = compose["services"]
    assert services["mongo"]["image"].startswith("mongo:") and services["redis"]["image"].startswith("redis:")
    replicas = [name for name, spec in services.items() if name.startswith("igsync-")]
    assert len(replicas) == 2
    for name in replicas:
        env = services[name]["environment"]
        assert env["IGSYNC_MONGO_URL"].startswith("mongodb://mongo:")
        assert env["IGSYNC_REDIS_URL"].startswith("redis://redis:")
    example = dict(
        line.split("=", 1)
        for line in (ROOT / "deploy" / "env.example").read_text().splitlines()
        if line and not line.startswith("#")
    )
    # The example's values must never pass for real secrets.
    with pytest.raises(ConfigError, match="placeholder"):
        Settings.from_env({**PROD, **example})


def test_dockerfile_runs_as_non_root_with_a_healthcheck() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert text.startswith("# ") and "FROM python:3.11-slim" in text
    assert "\nUSER 10001\n" in text and "HEALTHCHECK" in text and "/healthz" in text
    assert 'CMD ["igsync", "serve"]' in text
    # The embedded stores (SecantusDB is GPL-2.0-only) stay out of the image.
    assert "requirements-embedded" not in text and "[embedded]" not in text


def test_every_setting_is_documented() -> None:
    documented = (ROOT / "docs" / "configuration.md").read_text()
    missing = [name for name, _, _ in describe() if f"`{name}`" not in documented]
    assert missing == [], f"add these to docs/configuration.md: {missing}"
