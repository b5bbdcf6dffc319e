"""The one settings object of igsync, built from ``IGSYNC_*`` environment variables.

This module owns every tunable of the server: its name, default, unit and one-line help,
and the validation that turns a wrong value into one clear start-up error. Nothing else
reads ``os.environ`` for configuration.

Two modes:

* **embedded** (no ``IGSYNC_MONGO_URL`` / ``IGSYNC_REDIS_URL``): the CLI starts its own
  MongoDB-compatible and Redis servers and fills missing secrets from the dev secrets file
  in ``IGSYNC_DATA_DIR`` (see :mod:`server.app.devsecrets`).
* **production** (both URLs given): every secret must be given and look real.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

ENV_PREFIX = "IGSYNC_"
# A secret shorter than this is a placeholder, not a secret.
MIN_SECRET_CHARS = 16
# Values copied from an example file rather than generated.
PLACEHOLDER_MARKERS = ("replace-with", "changeme", "change-me", "example", "placeholder")
SECRET_FIELDS = ("app_secret", "verify_token", "admin_token", "internal_tokens")


class ConfigError(ValueError):
    """A configuration value is wrong; the message is one line meant for the operator."""


def _setting(default: Any, help: str, *, secret: bool = False) -> Any:
    return field(default=default, metadata={"help": help, "secret": secret})


# Settings that must be above zero (times, sizes, counts).
POSITIVE_SETTINGS = (
    "dedup_ttl_secs",
    "dedup_window_secs",
    "dedup_redis_timeout_ms",
    "ws_ping_secs",
    "ws_queue_max",
    "ws_log_max_events",
    "ws_log_ttl_secs",
    "ws_once_ttl_secs",
    "realtime_redis_timeout_ms",
    "max_body_bytes",
    "webhook_events_ttl_days",
    "store_timeout_ms",
    "readyz_timeout_ms",
    "shutdown_drain_secs",
    "http_idle_timeout_secs",
    "http_body_timeout_secs",
    "media_max_bytes",
    "monitor_interval_secs",
    "trigger_stream_maxlen",
    "trigger_poll_secs",
    "trigger_max_defer_secs",
    "trigger_max_attempts",
    "trigger_retry_base_secs",
    "trigger_retry_max_secs",
    "trigger_lease_margin_secs",
    "trigger_jobs_ttl_days",
    "profile_concurrency",
    "profile_max_attempts",
    "profile_retry_base_secs",
    "media_timeout_secs",
    "media_lease_secs",
    "media_max_attempts",
    "media_retry_base_secs",
    "media_poll_secs",
    "orphan_events_ttl_days",
    "send_lease_secs",
    "send_max_attempts",
    "send_retry_base_secs",
    "send_poll_secs",
    "send_text_per_sec",
    "send_media_per_sec",
    "token_refresh_before_days",
    "token_check_secs",
    "history_calls_per_sec",
    "history_lease_secs",
    "meta_retry_window_secs",
    "heartbeat_secs",
)


@dataclass(frozen=True)
class Settings:
    host: str = _setting("127.0.0.1", "listen address")
    port: int = _setting(8080, "listen port (0 picks a free one)")
    mongo_url: str | None = _setting(None, "MongoDB URL; unset starts the embedded server")
    mongo_db: str = _setting("igsync", "MongoDB database name")
    mongo_write_concern: str = _setting(
        "majority", "write concern w of every write (majority or a node count); every write is also journaled (j)"
    )
    redis_url: str | None = _setting(None, "Redis URL; unset starts the embedded server")
    redis_cluster: bool = _setting(False, "true: IGSYNC_REDIS_URL names one node of a Redis Cluster")
    redis_sentinels: tuple[str, ...] = _setting(
        (), "comma-separated host:port of Redis Sentinels; IGSYNC_REDIS_URL then gives only db, password and TLS"
    )
    redis_sentinel_master: str = _setting("mymaster", "the master name the Sentinels monitor")
    data_dir: str = _setting("./var", "embedded stores' data and dev secrets")
    app_secret: str | None = _setting(None, "Meta app secret that signs webhooks", secret=True)
    verify_token: str | None = _setting(None, "webhook subscription handshake token", secret=True)
    admin_token: str | None = _setting(None, "bearer token of the admin API", secret=True)
    internal_tokens: tuple[str, ...] = _setting((), "comma-separated bearer tokens of mark-sent callers", secret=True)
    dedup_ttl_secs: int = _setting(60, "life of the mark-sent Redis keys")
    dedup_window_secs: int = _setting(30, "how far back the MongoDB echo match looks")
    dedup_redis_timeout_ms: int = _setting(
        250, "Redis timeout of the dedup hints; a slower Redis is skipped (MongoDB decides alone)"
    )
    graph_api_url: str = _setting("https://graph.instagram.com", "Graph API host of Instagram-Login channels")
    facebook_graph_api_url: str = _setting(
        "https://graph.facebook.com", "Graph API host of Facebook-Login channels (Messenger Platform for Instagram)"
    )
    graph_api_timeout_secs: float = _setting(10.0, "timeout of one Graph API call")
    ws_ping_secs: int = _setting(25, "WebSocket keep-alive ping interval")
    ws_queue_max: int = _setting(1000, "events queued for one socket before it is dropped")
    ws_allowed_origins: tuple[str, ...] = _setting(
        (), "comma-separated browser origins allowed on /ws besides the server's own (e.g. https://inbox.example.com)"
    )
    ws_log_max_events: int = _setting(1000, "events kept per channel for since_seq resume (Redis stream MAXLEN ~)")
    ws_log_ttl_secs: int = _setting(604_800, "an idle channel's event log expires after this long (then a new epoch)")
    ws_once_ttl_secs: int = _setting(
        172_800, "how long a message's events are remembered as logged (a redelivery re-logs only what never was)"
    )
    realtime_redis_timeout_ms: int = _setting(
        500, "Redis timeout on the event publish path; past it events reach this process's sockets only"
    )
    max_body_bytes: int = _setting(1_048_576, "largest webhook body accepted")
    log_format: str = _setting("text", "log format: text or json")
    log_level: str = _setting("INFO", "log level")
    metrics_token: str | None = _setting(None, "bearer token required on /metrics when set", secret=True)
    monitor_interval_secs: float = _setting(
        30.0, "how often readiness, silent channels and stored duplicates are re-checked for /metrics"
    )
    expiry_sweep_secs: float = _setting(
        0.0,
        "how often igsync deletes documents past their TTL index itself (0: the store's TTL monitor does,"
        " as MongoDB's does; on the embedded store this is 5 and the TTL indexes are plain ones igsync reads)",
    )
    trigger_stream: str = _setting("igsync:triggers", "Redis Stream of workflow triggers")
    trigger_stream_maxlen: int = _setting(100_000, "approximate length the trigger stream is trimmed to")
    trigger_workers: int = _setting(32, "conversations this process delivers triggers for at once (0: none)")
    trigger_poll_secs: float = _setting(1.0, "how often the trigger dispatcher looks for due jobs")
    trigger_max_defer_secs: float = _setting(
        5.0, "while webhooks are being handled, trigger deliveries start at most this often"
    )
    trigger_max_attempts: int = _setting(8, "delivery attempts before a trigger job is dead-lettered")
    trigger_retry_base_secs: float = _setting(30.0, "first retry delay of a trigger; doubles per attempt")
    trigger_retry_max_secs: float = _setting(
        3600.0, "longest wait between two trigger attempts (also caps Retry-After)"
    )
    trigger_lease_margin_secs: float = _setting(30.0, "lease on a conversation's triggers beyond the HTTP timeout")
    trigger_jobs_ttl_days: int = _setting(7, "how long delivered trigger jobs are kept")
    webhook_events_ttl_days: int = _setting(7, "how long raw webhook bodies are kept")
    channel_cache_secs: float = _setting(5.0, "how long a process trusts its cached channel lookup")
    store_timeout_ms: int = _setting(
        5000, "longest wait for one MongoDB or Redis round trip (socket, connect, server selection); then 503"
    )
    readyz_timeout_ms: int = _setting(2000, "deadline of /readyz's store pings (a store slower than it is not ready)")
    shutdown_drain_secs: float = _setting(
        10.0, "on SIGTERM, how long requests in flight may take to finish before sockets and stores close"
    )
    http_idle_timeout_secs: float = _setting(
        75.0, "an HTTP connection idle (or still sending its headers) this long is closed"
    )
    http_body_timeout_secs: float = _setting(30.0, "a request body still arriving after this long is dropped")
    media_max_bytes: int = _setting(26_214_400, "largest media attachment downloaded")
    graph_api_version: str = _setting(
        "v25.0", "Graph API version of every call (v25.0: Meta supports it until July 2028)"
    )
    profile_concurrency: int = _setting(4, "customer profile look-ups running at once per process")
    profile_max_attempts: int = _setting(3, "tries of one profile look-up on timeouts, 5xx and rate limits")
    profile_retry_base_secs: float = _setting(2.0, "first wait before retrying a profile look-up (doubles)")
    profile_refresh_days: float = _setting(
        7.0, "look a customer up again when they write and the last look-up is older (0: never)"
    )
    media_concurrency: int = _setting(4, "media downloads running at once per process (0: this process runs none)")
    media_timeout_secs: float = _setting(60.0, "timeout of one media download")
    media_lease_secs: float = _setting(120.0, "how long a claimed media job is reserved (longer than the timeout)")
    media_max_attempts: int = _setting(5, "tries of one media download before it is marked failed")
    media_retry_base_secs: float = _setting(5.0, "first wait before retrying a media download (doubles)")
    media_poll_secs: float = _setting(2.0, "how often an idle media worker looks for jobs from other processes")
    send_concurrency: int = _setting(4, "sends to Instagram running at once per process (0: this process sends none)")
    send_lease_secs: float = _setting(
        60.0, "how long a send is reserved for its worker; after it another process takes it over"
    )
    send_max_attempts: int = _setting(8, "tries of one send on Meta's rate limits, outages and timeouts")
    send_retry_base_secs: float = _setting(2.0, "first wait before retrying a send (doubles, at most 10 minutes)")
    send_poll_secs: float = _setting(1.0, "how often an idle send worker looks for sends queued by other processes")
    send_text_per_sec: float = _setting(300.0, "Send API calls per second per account for text and images (Meta's)")
    send_media_per_sec: float = _setting(10.0, "Send API calls per second per account for audio and video (Meta's)")
    token_refresh_before_days: float = _setting(
        10.0, "refresh an Instagram-Login token this long before it expires (Meta's tokens live 60 days)"
    )
    token_check_secs: float = _setting(3600.0, "how often one process looks for tokens due for a refresh")
    history_calls_per_sec: float = _setting(
        2.0, "Conversations API calls per second per account during history import and gap repair (Meta's limit)"
    )
    history_concurrency: int = _setting(
        1, "1: this process runs history imports and gap repairs, one at a time; 0: it leaves them to others"
    )
    history_lease_secs: float = _setting(60.0, "a history import not heard from this long is taken over")
    meta_retry_window_secs: float = _setting(
        900.0, "an outage longer than this (Meta may have stopped redelivering) is repaired from the Conversations API"
    )
    heartbeat_secs: float = _setting(60.0, "how often a process records that it is up (outages are measured by it)")
    orphan_events_ttl_days: int = _setting(30, "how long an event about a message we never stored is kept")
    transcriber: str = _setting("", "audio transcriber as module:factory; empty keeps the no-op default")

    @property
    def embedded_mongo(self) -> bool:
        """No IGSYNC_MONGO_URL: the CLI starts an embedded store."""
        return not self.mongo_url

    @property
    def embedded_redis(self) -> bool:
        """No IGSYNC_REDIS_URL: the CLI starts an embedded Redis."""
        return not self.redis_url

    @property
    def production(self) -> bool:
        """Both stores are real: secrets must be real too."""
        return not (self.embedded_mongo or self.embedded_redis)

    def replace(self, **changes: Any) -> Settings:
        """A copy with ``changes`` applied (settings are frozen)."""
        return dataclasses.replace(self, **changes)

    def redacted(self) -> dict[str, Any]:
        """The settings as a dict with every secret replaced, for logs and `doctor`."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.metadata.get("secret") and value:
                value = "<set>"
            out[f.name] = value
        return out

    def check_secrets(self) -> None:
        """Refuse to run without real secrets (production, or after dev secrets are filled)."""
        for name in SECRET_FIELDS:
            value = getattr(self, name)
            values = value if isinstance(value, tuple) else (value,)
            if not value:
                raise ConfigError(f"{env_name(name)} is required when MongoDB and Redis URLs are given")
            for v in values:
                if any(marker in v.lower() for marker in PLACEHOLDER_MARKERS):
                    raise ConfigError(f"{env_name(name)} still holds a placeholder value; generate a real secret")
                if len(v) < MIN_SECRET_CHARS:
                    raise ConfigError(
                        f"{env_name(name)} is too short to be a real secret (at least {MIN_SECRET_CHARS} characters)"
                    )

    @classmethod
    def from_env(cls, env: Mapping[str, str], *, require_secrets: bool = True) -> Settings:
        """Build settings from ``env``; raise :class:`ConfigError` with one clear line.

        ``require_secrets=False`` is for ``igsync doctor``, which reports missing or weak secrets
        as a failing check instead of refusing to run."""
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            raw = env.get(env_name(f.name))
            if raw is None or raw.strip() == "":
                continue
            values[f.name] = _parse(f, raw.strip())
        settings = cls(**values)
        settings.validate()
        if settings.production and require_secrets:
            settings.check_secrets()
        return settings

    def validate(self) -> None:
        """Raise one ConfigError naming every setting that is out of range."""
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"IGSYNC_PORT must be between 0 and 65535, got {self.port}")
        for name in POSITIVE_SETTINGS:
            if getattr(self, name) <= 0:
                raise ConfigError(f"{env_name(name)} must be a positive number")
        if self.profile_refresh_days < 0:
            raise ConfigError("IGSYNC_PROFILE_REFRESH_DAYS must be 0 (never) or more")
        if self.expiry_sweep_secs < 0:
            raise ConfigError("IGSYNC_EXPIRY_SWEEP_SECS must be 0 (off) or more")
        if self.trigger_workers < 0:
            raise ConfigError("IGSYNC_TRIGGER_WORKERS must be 0 or more")
        if self.trigger_retry_max_secs < self.trigger_retry_base_secs:
            raise ConfigError("IGSYNC_TRIGGER_RETRY_MAX_SECS must not be below IGSYNC_TRIGGER_RETRY_BASE_SECS")
        if not self.trigger_stream.strip():
            raise ConfigError("IGSYNC_TRIGGER_STREAM must not be empty")
        if self.log_format not in ("text", "json"):
            raise ConfigError(f"IGSYNC_LOG_FORMAT must be 'text' or 'json', got {self.log_format!r}")
        if self.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise ConfigError(f"IGSYNC_LOG_LEVEL must be DEBUG, INFO, WARNING or ERROR, got {self.log_level!r}")
        if self.mongo_url and not self.mongo_url.startswith(("mongodb://", "mongodb+srv://")):
            raise ConfigError("IGSYNC_MONGO_URL must start with mongodb:// or mongodb+srv://")
        w = self.mongo_write_concern
        if w != "majority" and not (w.isdigit() and int(w) >= 1):
            raise ConfigError(f"IGSYNC_MONGO_WRITE_CONCERN must be 'majority' or a node count of 1 or more, got {w!r}")
        if self.redis_url and not self.redis_url.startswith(("redis://", "rediss://", "unix://")):
            raise ConfigError("IGSYNC_REDIS_URL must start with redis://, rediss:// or unix://")
        if self.redis_cluster and self.redis_sentinels:
            raise ConfigError("IGSYNC_REDIS_CLUSTER and IGSYNC_REDIS_SENTINELS cannot both be set")
        if (self.redis_cluster or self.redis_sentinels) and not self.redis_url:
            raise ConfigError("IGSYNC_REDIS_URL is required with IGSYNC_REDIS_CLUSTER or IGSYNC_REDIS_SENTINELS")
        for address in self.redis_sentinels:
            host, _, port = address.rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ConfigError(f"IGSYNC_REDIS_SENTINELS entries must be host:port, got {address!r}")
        for origin in self.ws_allowed_origins:
            if origin != "*" and not origin.startswith(("http://", "https://")):
                raise ConfigError(f"IGSYNC_WS_ALLOWED_ORIGINS entries must be http(s) origins or *, got {origin!r}")
        if not self.graph_api_url.startswith(("http://", "https://")):
            raise ConfigError("IGSYNC_GRAPH_API_URL must be an http(s) URL")
        if self.history_concurrency not in (0, 1):
            raise ConfigError("IGSYNC_HISTORY_CONCURRENCY must be 0 or 1")
        if self.send_concurrency < 0:
            raise ConfigError("IGSYNC_SEND_CONCURRENCY must be 0 or more")
        if self.send_lease_secs <= self.graph_api_timeout_secs:
            # A lease shorter than one Send API call would let a second worker send the same part.
            raise ConfigError("IGSYNC_SEND_LEASE_SECS must be longer than IGSYNC_GRAPH_API_TIMEOUT_SECS")
        if self.media_concurrency < 0:
            raise ConfigError("IGSYNC_MEDIA_CONCURRENCY must be 0 or more")
        if self.media_lease_secs <= self.media_timeout_secs:
            # A lease shorter than a download would let a second worker start the same job.
            raise ConfigError("IGSYNC_MEDIA_LEASE_SECS must be longer than IGSYNC_MEDIA_TIMEOUT_SECS")
        if self.transcriber and ":" not in self.transcriber:
            raise ConfigError("IGSYNC_TRANSCRIBER must look like package.module:factory")


_BOOLEANS = {"true": True, "1": True, "yes": True, "on": True, "false": False, "0": False, "no": False, "off": False}


def env_name(field_name: str) -> str:
    """The environment variable of a setting: ``IGSYNC_`` + its name in capitals."""
    return ENV_PREFIX + field_name.upper()


def _parse(f: dataclasses.Field, raw: str) -> Any:
    kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    name = env_name(f.name)
    try:
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
        if kind == "bool":
            if raw.lower() not in _BOOLEANS:
                raise ConfigError(f"{name} must be true or false, got {raw!r}")
            return _BOOLEANS[raw.lower()]
        if kind.startswith("tuple"):
            return tuple(t.strip() for t in raw.split(",") if t.strip())
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None
    return raw


def describe() -> list[tuple[str, str, str]]:
    """(variable, default, help) for every setting — the README table and `--help`."""
    rows = []
    for f in dataclasses.fields(Settings):
        default = f.default
        if isinstance(default, tuple):
            default = ",".join(default)
        elif isinstance(default, bool):
            default = str(default).lower()
        rows.append((env_name(f.name), "" if default is None else str(default), f.metadata["help"]))
    return rows
