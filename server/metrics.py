"""Every Prometheus metric of igsync, in one place.

Naming rule: ``igsync_<subsystem>_<what>_<unit>``; counters end in ``_total``, durations
are ``_seconds`` histograms. Labels take only values from the fixed sets below (never
ids, paths or user input), and every label value is created at start-up so that a
series exists at 0 before its first event — ``rate()`` and alerts work from the start.

The metrics live in a :class:`Metrics` object with its own registry, created once by the
app's wiring and injected; tests build as many independent ones as they like.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# Outcomes of one webhook POST (the request as a whole).
WEBHOOK_OUTCOMES = ("processed", "invalid_signature", "bad_request", "too_large", "store_error", "error")
# Kinds of webhook items (server.webhook_parse.KIND_* plus the channel-less outcomes).
WEBHOOK_KINDS = ("message", "reaction", "read", "edit", "unsend", "test", "invalid", "ignored")
DIRECTIONS = ("customer_to_owner", "owner_to_customer", "none")
DUPLICATE_LAYERS = ("mid", "cache", "database", "adopted")
MARK_SENT_OUTCOMES = ("created", "idempotent", "adopted", "invalid", "not_found", "unauthorized", "error")
WS_DISCONNECT_REASONS = ("client_closed", "slow_consumer", "shutdown", "ping_timeout", "error")
STORES = ("mongo", "redis")
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
# Events and media (issue 7).
PROFILE_OUTCOMES = ("fetched", "reauth_required", "unavailable", "error", "no_token", "dropped")
MEDIA_OUTCOMES = ("completed", "failed", "retried", "cancelled")
ORPHAN_KINDS = ("reaction", "unreact", "read", "edit", "unsend")

# Webhook handling is a few MongoDB round trips: ~1 ms on loopback, tens of ms on a
# loaded replica set; Meta times out at 20 s. Buckets from 1 ms to 10 s.
WEBHOOK_DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# Webhook received → event written to a socket. The product promise is "at once":
# tens of ms is normal, 1 s is the alert threshold, so resolution is finest below 1 s.
DELIVERY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
# mark-sent → its echo: Meta usually echoes within a second, sometimes before mark-sent
# (observed as 0), and redeliveries come minutes later; the window is 30–60 s.
ECHO_DELAY_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
# Customer message stored → trigger acknowledged: milliseconds when the receiver is up, then
# the retry schedule (30 s … about an hour) when it is not.
TRIGGER_DELIVERY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 60.0, 300.0, 1800.0, 3600.0)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
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
        self.ws_connections = Gauge("igsync_ws_connections", "Open WebSocket connections.", registry=r)
        self.ws_disconnects = Counter(
            "igsync_ws_disconnects_total", "WebSocket connections closed, by reason.", ["reason"], registry=r
        )
        self.pubsub_reconnects = Counter(
            "igsync_pubsub_reconnects_total",
            "Times the realtime hub's Redis pub/sub connection was re-established after a failure.",
            registry=r,
        )
        self.store_errors = Counter(
            "igsync_store_errors_total", "Failed MongoDB/Redis operations.", ["store"], registry=r
        )
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
            registry=r,
        )
        self.trigger_pending = Gauge(
            "igsync_trigger_pending_jobs",
            "Triggers not delivered yet: pending jobs and marked messages (refreshed by the dispatcher).",
            registry=r,
        )
        self.trigger_oldest_pending = Gauge(
            "igsync_trigger_oldest_pending_seconds",
            "Age of the oldest undelivered trigger job, 0 when none (refreshed by the dispatcher).",
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
        # Events and media (issue 7).
        self.profile_lookups = Counter(
            "igsync_profile_lookups_total", "Customer profile look-ups by outcome.", ["outcome"], registry=r
        )
        self.media_jobs = Counter(
            "igsync_media_jobs_total", "Media download attempts by outcome.", ["outcome"], registry=r
        )
        self.orphan_events = Counter(
            "igsync_orphan_events_total",
            "Events about a message that was not stored (kept to apply later).",
            ["kind"],
            registry=r,
        )
        self._precreate()

    def _precreate(self) -> None:
        for outcome in WEBHOOK_OUTCOMES:
            self.webhook_requests.labels(outcome=outcome)
        for kind in WEBHOOK_KINDS:
            for direction in DIRECTIONS:
                self.webhook_events.labels(kind=kind, direction=direction)
        for layer in DUPLICATE_LAYERS:
            self.duplicates.labels(layer=layer)
        for outcome in MARK_SENT_OUTCOMES:
            self.mark_sent.labels(outcome=outcome)
        for reason in WS_DISCONNECT_REASONS:
            self.ws_disconnects.labels(reason=reason)
        for store in STORES:
            self.store_errors.labels(store=store)
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
        for kind in ORPHAN_KINDS:
            self.orphan_events.labels(kind=kind)

    def render(self) -> bytes:
        return generate_latest(self.registry)
