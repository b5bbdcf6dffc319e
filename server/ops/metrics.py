"""Every Prometheus metric of igsync, in one place.

Naming rule: ``igsync_<subsystem>_<what>_<unit>``; counters end in ``_total``, durations
are ``_seconds`` histograms, 0/1 states and counts of things are plain gauges. Labels take
only values from the fixed sets below (never ids, paths or user input: a label value that
is not in its set is folded into ``other``), and every label value is created at start-up
so that a series exists at 0 before its first event — ``rate()``, ``increase()`` and
alerts work from the start instead of seeing a series appear out of nothing.

The metrics live in a :class:`Metrics` object with its own registry, created once by
:func:`server.app.core.build_core` and injected; tests build as many independent ones as they
like. Code that produces a metric (the PyMongo listener and Redis client of
:mod:`server.ops.store_metrics`, the HTTP access log of :mod:`server.ops.access_log`, the
periodic checks of :mod:`server.ops.monitor`) only ever touches the attributes defined
here. docs/operations.md describes each metric for operators.

Pre-forked workers (``igsync serve --workers N``) share one set of series through
prometheus-client's multiprocess mode (:func:`share_between_workers`, called by the parent
before it forks): each worker writes its values to files in one directory, and any worker's
``/metrics`` reads them all — counters and histograms summed, each gauge by its
``multiprocess_mode`` (open sockets summed, readiness the lowest, the periodic checks' figures
the latest). One scrape target per machine, whatever the number of workers.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Iterable
from importlib import metadata

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
    multiprocess,
    values,
)

# prometheus-client's own variable: where the workers' files are (set by share_between_workers).
MULTIPROCESS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"


def share_between_workers(directory: str) -> None:
    """Make every series created from now on live in files under ``directory`` (empty, owned
    by this server), shared by the processes forked after this call."""
    os.environ[MULTIPROCESS_DIR_ENV] = directory
    values.ValueClass = values.MultiProcessValue()


def worker_exited(pid: int) -> None:
    """A worker is gone: its ``live*`` gauges stop counting (its counters stay in the sums)."""
    if os.environ.get(MULTIPROCESS_DIR_ENV):
        multiprocess.mark_process_dead(pid)


# Outcomes of one webhook POST (the request as a whole).
WEBHOOK_OUTCOMES = ("processed", "invalid_signature", "bad_request", "too_large", "store_error", "error")
# Kinds of webhook items (server.webhook_parse.KIND_* plus the channel-less outcomes).
WEBHOOK_KINDS = ("message", "reaction", "read", "edit", "unsend", "test", "invalid", "ignored")
DIRECTIONS = ("customer_to_owner", "owner_to_customer", "none")
DUPLICATE_LAYERS = ("mid", "cache", "database", "adopted")
MARK_SENT_OUTCOMES = ("created", "idempotent", "adopted", "invalid", "not_found", "unauthorized", "error")
# Sends through igsync: queued (stored, 202), sent, retry (a transient error, tried again later),
# failed (a final outcome), outside_window (refused with 422), retried_by_user (POST …/retry).
SEND_OUTCOMES = ("queued", "sent", "retry", "failed", "outside_window", "retried_by_user")
WS_DISCONNECT_REASONS = ("client_closed", "slow_consumer", "shutdown", "ping_timeout", "error")
STORES = ("mongo", "redis")
OTHER = "other"

# "Is Instagram still calling us?": connected channels whose last webhook is older than
# each threshold. Instagram sends no heartbeat, so silence is only meaningful against a
# channel's normal traffic: 1h catches a busy account going quiet, 24h a quiet one.
SILENCE_THRESHOLDS_SECS = {"1h": 3600, "6h": 6 * 3600, "24h": 24 * 3600}

# MongoDB commands the code issues (PyMongo command names); anything else is "other".
MONGO_COMMANDS = (
    "find",
    "insert",
    "update",
    "delete",
    "bulkWrite",
    "findAndModify",
    "aggregate",
    "count",
    "distinct",
    "getMore",
    "createIndexes",
    "ping",
    "killCursors",
    "endSessions",
    "commitTransaction",
    "abortTransaction",
    OTHER,
)
# Redis commands the code issues (lower case); "pipeline"/"multi" are whole pipelines,
# anything else is "other". Blocking reads (BLOCK/BLPOP…) are counted but not timed:
# their duration is the wait for data, not the server's latency.
REDIS_COMMANDS = (
    "get",
    "set",
    "del",
    "exists",
    "expire",
    "incr",
    "decr",
    "eval",
    "evalsha",
    "publish",
    "xadd",
    "xrange",
    "xrevrange",
    "xread",
    "xreadgroup",
    "xack",
    "xautoclaim",
    "xpending",
    "xgroup",
    "xlen",
    "zadd",
    "zrangebyscore",
    "ping",
    "pipeline",
    "multi",
    OTHER,
)
HTTP_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", OTHER)
# Status classes, not codes: bounded, and what an alert asks ("are we answering 5xx?").
# The exact code is in the access log line.
HTTP_STATUS_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")
# Workflow triggers (server.triggers): where a job goes, how a job ended, how one attempt went.
TRIGGER_TARGETS = ("http", "redis_stream")
TRIGGER_OUTCOMES = ("delivered", "dead", "cancelled")
TRIGGER_ATTEMPT_RESULTS = (
    "ok",
    "client_error",
    "rate_limited",
    "server_error",
    "timeout",
    "network_error",
    "redis_error",
)
# Label values of the profile look-ups and media downloads (all created at 0 up front).
PROFILE_OUTCOMES = ("fetched", "reauth_required", "unavailable", "error", "no_token", "dropped")
MEDIA_OUTCOMES = ("completed", "failed", "retried", "cancelled")
# Asking the Graph API for a fresh link when a download met an expired one (server/media/links.py).
# Accounts (server.accounts): who reported a refused token, what a token refresh did, and
# what a history import or gap repair did with each message Meta listed.
TOKEN_REJECTED_BY = ("profiles", "links", "send", "refresh", "history", "subscription")
TOKEN_REFRESH_OUTCOMES = ("refreshed", "transient_error", "rejected")
HISTORY_OUTCOMES = ("stored", "duplicate", "not_detailed", "invalid")
HISTORY_MODES = ("backfill", "repair")
MEDIA_LINK_OUTCOMES = ("refreshed", "no_link", "reauth_required", "no_token", "transient", "error")
ORPHAN_KINDS = ("reaction", "unreact", "read", "edit", "unsend")

# Webhook handling is a few MongoDB round trips: ~1 ms on loopback, tens of ms on a
# loaded replica set; Meta times out at 20 s. Buckets from 1 ms to 10 s.
WEBHOOK_DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# Webhook received → event written to a socket. The product promise is "at once":
# tens of ms is normal, 1 s is the alert threshold, so resolution is finest below 1 s.
DELIVERY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
# mark-sent → its echo: Meta usually echoes within a second, sometimes before mark-sent
# (observed as 0), and redeliveries come minutes later; the window is 30–60 s.
# Stored → Instagram accepted every part: ~0.1–1 s normally, minutes when Meta rate-limits.
SEND_DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0)
ECHO_DELAY_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
# One store round trip: ~0.2–1 ms on loopback, 1–10 ms to a replica set in the same
# region; the client gives up at IGSYNC_STORE_TIMEOUT_MS (5 s). 0.5 ms resolution at the
# bottom so a healthy store is not one flat bucket.
STORE_COMMAND_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
# One HTTP request end to end: REST reads are one or two indexed queries (ms), webhooks
# are covered in detail above; the tail up to 10 s shows a stalled store.
# A collection of the young generation: well under a millisecond to tens of ms; a full one grows
# with the objects the process holds (about 70 ms per 100 000 with 10 000 sockets open).
GC_PAUSE_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
# CPython's generations 0, 1 and 2 (label values are words, like every label here).
GC_GENERATIONS = ("young", "middle", "old")
HTTP_DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def package_version() -> str:
    """The installed igsync version (``build_info``)."""
    try:
        return metadata.version("igsync")
    except metadata.PackageNotFoundError:
        return "unknown"


def bounded(value: str, allowed: Iterable[str]) -> str:
    """``value`` if it is one of the allowed label values, else ``"other"``."""
    return value if value in allowed else OTHER


def status_class(status: int) -> str:
    """The status class label of an HTTP status: ``2xx`` … ``5xx``."""
    return f"{status // 100}xx" if 100 <= status < 600 else "5xx"


# Customer message stored → trigger acknowledged: milliseconds when the receiver is up, then
# the retry schedule (30 s … about an hour) when it is not.
TRIGGER_DELIVERY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 60.0, 300.0, 1800.0, 3600.0)


class Metrics:
    """Every series of one process, created once and injected (no module-level metric)."""

    def __init__(self, registry: CollectorRegistry | None = None, *, process_metrics: bool = True) -> None:
        # The *_created series (one per counter and histogram child) double the scrape for
        # nothing an operator asks; this switch is prometheus_client's, process-wide.
        disable_created_metrics()
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        if process_metrics:
            # process_* (CPU, resident memory, open fds, start time): the standard names.
            ProcessCollector(registry=r)

        self._contract_series(r)
        self._health_series(r)
        self._store_series(r)
        self._http_series(r)
        self._trigger_series(r)
        self._media_series(r)
        self._precreate()
        self.build_info.labels(version=package_version(), python=platform.python_version()).set(1)

    def _contract_series(self, r: CollectorRegistry) -> None:
        """The series API.md §5 names: webhooks, duplicates by layer, delivery, sockets."""
        self.webhook_requests = Counter(
            "igsync_webhook_requests_total", "Webhook POSTs by outcome.", ["outcome"], registry=r
        )
        self.webhook_events = Counter(
            "igsync_webhook_events_total", "Webhook items by kind and direction.", ["kind", "direction"], registry=r
        )
        self.duplicates = Counter(
            "igsync_duplicates_total",
            "Messages recognised as already stored, by the dedup layer that caught them.",
            ["layer"],
            registry=r,
        )
        self.webhook_duration = Histogram(
            "igsync_webhook_duration_seconds",
            "Time to verify, store and answer one webhook POST.",
            buckets=WEBHOOK_DURATION_BUCKETS,
            registry=r,
        )
        self.event_delivery = Histogram(
            "igsync_event_delivery_seconds",
            "Webhook received → event written to a WebSocket.",
            buckets=DELIVERY_BUCKETS,
            registry=r,
        )
        self.echo_delay = Histogram(
            "igsync_echo_delay_seconds",
            "mark-sent → its echo from Instagram (0 when the echo came first).",
            buckets=ECHO_DELAY_BUCKETS,
            registry=r,
        )
        self.mark_sent = Counter("igsync_mark_sent_total", "mark-sent calls by outcome.", ["outcome"], registry=r)
        self.sends = Counter(
            "igsync_sends_total", "Messages sent through igsync, by outcome (SEND_OUTCOMES).", ["outcome"], registry=r
        )
        self.send_duration = Histogram(
            "igsync_send_duration_seconds",
            "A message sent through igsync: stored → Instagram accepted its last part.",
            buckets=SEND_DURATION_BUCKETS,
            registry=r,
        )
        self.send_queue_depth = Gauge(
            "igsync_send_queue_depth",
            "Messages waiting to be sent or being sent (all processes).",
            multiprocess_mode="livemostrecent",
            registry=r,
        )
        self.ws_connections = Gauge(
            "igsync_ws_connections", "Open WebSocket connections.", multiprocess_mode="livesum", registry=r
        )
        self.ws_disconnects = Counter(
            "igsync_ws_disconnects_total", "WebSocket connections closed, by reason.", ["reason"], registry=r
        )
        self.pubsub_reconnects = Counter(
            "igsync_pubsub_reconnects_total",
            "Times the realtime hub's Redis pub/sub connection was re-established after a failure.",
            registry=r,
        )
        self.store_errors = Counter(
            "igsync_store_errors_total",
            "MongoDB/Redis operations the server needed and could not do (each failure handled once).",
            ["store"],
            registry=r,
        )

    def _health_series(self, r: CollectorRegistry) -> None:
        """What an operator needs beside them: build, readiness, silent channels, stored duplicates."""
        self.gc_pauses = Histogram(
            "igsync_gc_pause_seconds",
            "Event loop stopped by Python's cyclic garbage collector, by generation collected.",
            ["generation"],
            buckets=GC_PAUSE_BUCKETS,
            registry=r,
        )
        self.build_info = Gauge(
            "igsync_build_info",
            "Always 1; the labels say which igsync and Python run.",
            ["version", "python"],
            multiprocess_mode="livemax",
            registry=r,
        )
        self.ready = Gauge(
            "igsync_ready",
            "1 when MongoDB and Redis both answer (what /readyz says), else 0.",
            multiprocess_mode="livemin",
            registry=r,
        )
        self.store_up = Gauge(
            "igsync_store_up",
            "1 when this store answered the last readiness check, else 0.",
            ["store"],
            multiprocess_mode="livemin",
            registry=r,
        )
        self.channels_connected = Gauge(
            "igsync_channels_connected",
            "Connected channels (as of the last periodic check).",
            multiprocess_mode="livemostrecent",
            registry=r,
        )
        self.channels_silent = Gauge(
            "igsync_channels_silent",
            "Connected channels without a webhook for longer than the threshold (since connecting, if never).",
            ["threshold"],
            multiprocess_mode="livemostrecent",
            registry=r,
        )
        self.duplicates_stored = Gauge(
            "igsync_duplicates_stored",
            "Suspected duplicates stored in the last hour: an app/AI message and an unabsorbed echo with the "
            "same text in one conversation within the dedup window.",
            multiprocess_mode="livemostrecent",
            registry=r,
        )
        self.monitor_runs = Counter(
            "igsync_monitor_runs_total",
            "Periodic checks (readiness, silent channels, stored duplicates) by result.",
            ["result"],
            registry=r,
        )
        self.expired_documents = Counter(
            "igsync_expired_documents_total",
            "Documents past their TTL index deleted by igsync itself (the embedded store's sweep).",
            ["collection"],
            registry=r,
        )

    def _store_series(self, r: CollectorRegistry) -> None:
        """Every MongoDB and Redis command's round trip and failures, by command name."""
        self.mongo_command_duration = Histogram(
            "igsync_mongo_command_duration_seconds",
            "MongoDB command round trips by command name.",
            ["command"],
            buckets=STORE_COMMAND_BUCKETS,
            registry=r,
        )
        self.mongo_command_failures = Counter(
            "igsync_mongo_command_failures_total",
            "MongoDB commands that failed (network, timeout, or a server error such as a duplicate key).",
            ["command"],
            registry=r,
        )
        self.redis_command_duration = Histogram(
            "igsync_redis_command_duration_seconds",
            "Redis command (or pipeline) round trips by command name; blocking reads are not timed.",
            ["command"],
            buckets=STORE_COMMAND_BUCKETS,
            registry=r,
        )
        self.redis_command_failures = Counter(
            "igsync_redis_command_failures_total",
            "Redis commands (or pipelines) that raised: connection errors, timeouts, error replies.",
            ["command"],
            registry=r,
        )

    def _http_series(self, r: CollectorRegistry) -> None:
        """Every HTTP request by handler class, method and status class."""
        self.http_requests = Counter(
            "igsync_http_requests_total",
            "HTTP requests answered, by handler class, method and status class.",
            ["handler", "method", "status"],
            registry=r,
        )
        self.http_duration = Histogram(
            "igsync_http_request_duration_seconds",
            "HTTP request duration (for WebSockets: the upgrade) by handler class.",
            ["handler"],
            buckets=HTTP_DURATION_BUCKETS,
            registry=r,
        )

    def _trigger_series(self, r: CollectorRegistry) -> None:
        """Workflow trigger deliveries: outcomes, attempts, backlog, latency."""
        self.trigger_deliveries = Counter(
            "igsync_trigger_deliveries_total",
            "Trigger jobs finished, by target and outcome (delivered, dead-lettered, cancelled).",
            ["target", "outcome"],
            registry=r,
        )
        self.trigger_attempts = Counter(
            "igsync_trigger_attempts_total",
            "Trigger delivery attempts, by target and result.",
            ["target", "result"],
            registry=r,
        )
        self.trigger_dead_letters = Gauge(
            "igsync_trigger_dead_letters",
            "Trigger jobs dead-lettered and not retried yet (refreshed by the dispatcher).",
            multiprocess_mode="livemostrecent",
            registry=r,
        )
        self.trigger_pending = Gauge(
            "igsync_trigger_pending_jobs",
            "Triggers not delivered yet: pending jobs and marked messages (refreshed by the dispatcher).",
            multiprocess_mode="livemostrecent",
            registry=r,
        )
        self.trigger_oldest_pending = Gauge(
            "igsync_trigger_oldest_pending_seconds",
            "Age of the oldest undelivered trigger job, 0 when none (refreshed by the dispatcher).",
            multiprocess_mode="livemostrecent",
            registry=r,
        )
        self.trigger_deferred_polls = Counter(
            "igsync_trigger_deferred_polls_total",
            "Dispatcher polls put off because this process was handling webhooks (webhooks first).",
            registry=r,
        )
        self.trigger_delivery = Histogram(
            "igsync_trigger_delivery_seconds",
            "Customer message stored → its trigger acknowledged by the receiver.",
            ["target"],
            buckets=TRIGGER_DELIVERY_BUCKETS,
            registry=r,
        )

    def _media_series(self, r: CollectorRegistry) -> None:
        """Profile look-ups, media downloads, link refreshes, early events."""
        self.token_rejections = Counter(
            "igsync_token_rejections_total",
            "Channels marked needs_reauth because Meta refused their token, by the caller that saw it.",
            ["by"],
            registry=r,
        )
        self.token_refreshes = Counter(
            "igsync_token_refreshes_total",
            "Instagram-Login token refreshes, by outcome (TOKEN_REFRESH_OUTCOMES).",
            ["outcome"],
            registry=r,
        )
        self.token_expiry = Gauge(
            "igsync_channel_token_expiry_seconds",
            "Seconds until the soonest expiry of a connected channel's token (+Inf: none expires; "
            "negative: one has expired). Which channel: igsync doctor.",
            multiprocess_mode="livemostrecent",
            registry=r,
        )
        self.channels_needing_reauth = Gauge(
            "igsync_channels_needing_reauth",
            "Connected channels whose token Meta refused: they wait to be reconnected.",
            multiprocess_mode="livemostrecent",
            registry=r,
        )
        self.history_messages = Counter(
            "igsync_history_messages_total",
            "Messages listed by the Conversations API during a history import or gap repair, by what became "
            "of them (HISTORY_OUTCOMES).",
            ["mode", "outcome"],
            registry=r,
        )
        self.messages_repaired = Counter(
            "igsync_messages_repaired_total",
            "Messages found only at Meta by a gap repair, stored and published as new.",
            registry=r,
        )
        self.profile_lookups = Counter(
            "igsync_profile_lookups_total", "Customer profile look-ups by outcome.", ["outcome"], registry=r
        )
        self.media_jobs = Counter(
            "igsync_media_jobs_total", "Media download attempts by outcome.", ["outcome"], registry=r
        )
        self.media_link_refreshes = Counter(
            "igsync_media_link_refreshes_total",
            "Fresh links asked of the Graph API for expired attachment links, by outcome.",
            ["outcome"],
            registry=r,
        )
        self.orphan_events = Counter(
            "igsync_orphan_events_total",
            "Events about a message that was not stored (kept to apply later).",
            ["kind"],
            registry=r,
        )

    def _precreate(self) -> None:
        for generation in GC_GENERATIONS:
            self.gc_pauses.labels(generation=generation)
        for outcome in WEBHOOK_OUTCOMES:
            self.webhook_requests.labels(outcome=outcome)
        for kind in WEBHOOK_KINDS:
            for direction in DIRECTIONS:
                self.webhook_events.labels(kind=kind, direction=direction)
        for layer in DUPLICATE_LAYERS:
            self.duplicates.labels(layer=layer)
        for outcome in MARK_SENT_OUTCOMES:
            self.mark_sent.labels(outcome=outcome)
        for outcome in SEND_OUTCOMES:
            self.sends.labels(outcome=outcome)
        for by in TOKEN_REJECTED_BY:
            self.token_rejections.labels(by=by)
        for outcome in TOKEN_REFRESH_OUTCOMES:
            self.token_refreshes.labels(outcome=outcome)
        for mode in HISTORY_MODES:
            for outcome in HISTORY_OUTCOMES:
                self.history_messages.labels(mode=mode, outcome=outcome)
        self.token_expiry.set(float("inf"))
        for reason in WS_DISCONNECT_REASONS:
            self.ws_disconnects.labels(reason=reason)
        for store in STORES:
            self.store_errors.labels(store=store)
            self.store_up.labels(store=store)
        for threshold in SILENCE_THRESHOLDS_SECS:
            self.channels_silent.labels(threshold=threshold)
        for result in ("ok", "failed"):
            self.monitor_runs.labels(result=result)
        for target in TRIGGER_TARGETS:
            self.trigger_delivery.labels(target=target)
            for outcome in TRIGGER_OUTCOMES:
                self.trigger_deliveries.labels(target=target, outcome=outcome)
            for result in TRIGGER_ATTEMPT_RESULTS:
                self.trigger_attempts.labels(target=target, result=result)
        for outcome in PROFILE_OUTCOMES:
            self.profile_lookups.labels(outcome=outcome)
        for outcome in MEDIA_OUTCOMES:
            self.media_jobs.labels(outcome=outcome)
        for outcome in MEDIA_LINK_OUTCOMES:
            self.media_link_refreshes.labels(outcome=outcome)
        for kind in ORPHAN_KINDS:
            self.orphan_events.labels(kind=kind)
        # Store commands are the hottest path of all: their children are looked up once here,
        # not through labels() (a lock and a validation) on every command.
        self.mongo_commands = {
            c: (self.mongo_command_duration.labels(command=c), self.mongo_command_failures.labels(command=c))
            for c in MONGO_COMMANDS
        }
        self.redis_commands = {
            c: (self.redis_command_duration.labels(command=c), self.redis_command_failures.labels(command=c))
            for c in REDIS_COMMANDS
        }

    def register_handlers(self, handlers: Iterable[tuple[str, Iterable[str], Iterable[str]]]) -> None:
        """Create the HTTP series of every route's handler: ``(class name, methods, status classes)``.

        Called by :func:`server.app.routes.make_app` with the route table, so a handler's series
        exist before its first request and the label set stays the (fixed) set of classes.
        """
        for handler, methods, statuses in handlers:
            self.http_duration.labels(handler=handler)
            for method in methods:
                for status in statuses:
                    self.http_requests.labels(handler=handler, method=method, status=status)

    def set_readiness(self, checks: dict[str, bool]) -> None:
        """Set ``igsync_store_up`` per store and ``igsync_ready``."""
        for store in STORES:
            self.store_up.labels(store=store).set(1 if checks.get(store) else 0)
        self.ready.set(1 if checks and all(checks.values()) else 0)

    def render(self) -> bytes:
        """The Prometheus text exposition of every series (of every worker, when shared)."""
        directory = os.environ.get(MULTIPROCESS_DIR_ENV)
        if directory:
            # process_* would describe only the worker that answers: left out (see operations.md).
            merged = CollectorRegistry()
            multiprocess.MultiProcessCollector(merged, path=directory)
            return generate_latest(merged)
        return generate_latest(self.registry)
