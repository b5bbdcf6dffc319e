"""``igsync doctor``: why do messages not show up? One pass/fail line per check, with what to do.

Owns the checks and their advice; their MongoDB queries live in :mod:`models.diagnostics`.
Checks, in order:

* ``config`` — webhook secret and verify token set and not placeholders (without printing them);
* ``mongodb`` / ``redis`` — reachable, with versions and round-trip time;
* ``indexes`` — every index ``Store.ensure_indexes`` creates exists (compared with the plan that
  code itself records, never a second list);
* ``channels`` — connected channels, per channel: page id, last webhook received, messages in the
  last hour, token state; and recent webhooks for accounts no channel has;
* ``pubsub`` — a message published on one Redis connection arrives on another;
* ``pipeline`` — a signed test webhook through this process's ingest pipeline to a temporary
  test channel (stored, then recognised as a duplicate on redelivery), cleaned up afterwards;
* ``trigger_outbox`` — the oldest undelivered workflow-trigger job (skipped without triggers);
* ``media`` — the media download queue: a job due for long means no worker takes jobs (every
  process web-only, ``IGSYNC_MEDIA_CONCURRENCY=0``); failed downloads, with the command that
  lists and retries them (skipped before the first attachment);
* ``server`` / ``webhook_signatures`` — the running server answers, accepts the verify token and a
  webhook signed with this configuration's secret, and how many webhooks it refused for their
  signature since it started (Meta's app secret differs from ours).

A failing check makes the exit code 1; ``warn`` and ``skip`` do not. Secrets never appear in
the output: URLs are shown without credentials, tokens not at all.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import secrets
import time
import uuid
from collections.abc import Awaitable
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urlencode, urlsplit

import orjson
from prometheus_client.parser import text_string_to_metric_families
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

from config import Settings
from config.settings import MIN_SECRET_CHARS, PLACEHOLDER_MARKERS
from models import diagnostics
from models.channels import login_of
from models.timeutil import iso, utcnow
from server.accounts.service import INCOMPLETE, NOT_SUBSCRIBED, SUBSCRIBED, shown_subscription
from server.api.signatures import sign
from server.app.core import Core, build_core
from server.inbox.events import NullSink
from server.inbox.threads import channel_account_ids
from server.ingest.audit import AUDIT_LINGER_SECS
from server.ops.redis_clients import RedisTopology

PASS = "pass"
FAIL = "fail"
WARN = "warn"
SKIP = "skip"

RECENT_WINDOW = dt.timedelta(hours=1)
UNMATCHED_WINDOW = dt.timedelta(hours=24)
TOKEN_EXPIRY_WARNING = dt.timedelta(days=7)
# A subscribed account without a webhook for this long: Meta is not delivering to us.
SUBSCRIBED_BUT_SILENT = dt.timedelta(hours=24)
OUTBOX_STUCK_AFTER = dt.timedelta(minutes=5)
# Workers poll every IGSYNC_MEDIA_POLL_SECS (2 s): a job due this long has no worker.
MEDIA_STUCK_AFTER = dt.timedelta(minutes=5)
# How long the server check waits for the running server's audit copy of its test webhook
# (written within AUDIT_LINGER_SECS of the answer) before removing it.
AUDIT_WAIT_SECS = 20 * AUDIT_LINGER_SECS
# The doctor's throw-away accounts and customers: digit strings, as every Instagram id must be
# (the webhook parser refuses anything else), that no real id can be — those never start with 0.
DOCTOR_ACCOUNT_PREFIX = "0000042"
META_TEST_ACCOUNT = "0"


@dataclass
class CheckResult:
    name: str
    status: str
    summary: str
    advice: str = ""
    details: dict[str, Any] = field(default_factory=dict)
    lines: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        """The check as JSON (``igsync doctor --json``)."""
        out = asdict(self)
        if not out["lines"]:
            out.pop("lines")
        return out


def public_url(url: str | None) -> str:
    """A store URL without credentials or options, for output."""
    if not url:
        return "(not set)"
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return f"{parts.scheme}://{host}{parts.path if parts.path not in ('', '/') else ''}"


def ago(when: dt.datetime | None, now: dt.datetime) -> str:
    """ "N units ago" for a time, or "never"."""
    if when is None:
        return "never"
    secs = int((now - when).total_seconds())
    if secs < 90:
        return f"{secs} s ago"
    if secs < 90 * 60:
        return f"{secs // 60} min ago"
    if secs < 48 * 3600:
        return f"{secs // 3600} h ago"
    return f"{secs // 86400} days ago"


def _secret_problem(name: str, value: str | None, consequence: str) -> str | None:
    if not value:
        return f"{name} is not set: {consequence}"
    if value.strip() != value:
        return f"{name} has leading or trailing spaces: {consequence}"
    if len(value) < MIN_SECRET_CHARS:
        return f"{name} looks like a placeholder (shorter than {MIN_SECRET_CHARS} characters): {consequence}"
    if any(marker in value.lower() for marker in PLACEHOLDER_MARKERS):
        return f"{name} still holds a placeholder value (as in deploy/env.example): {consequence}"
    return None


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 1)


class Doctor:
    def __init__(
        self,
        settings: Settings,
        *,
        server_url: str | None,
        timeout_secs: float = 5.0,
        config_problems: list[str] | None = None,
        embedded: bool | None = None,
    ) -> None:
        self.settings = settings
        # The settings passed in have store URLs either way; whether they were configured or are
        # the embedded stores' is the caller's knowledge.
        self.embedded = (not settings.production) if embedded is None else embedded
        self.server_url = server_url.rstrip("/") if server_url else None
        self.timeout_secs = timeout_secs
        self.config_problems = list(config_problems or [])
        self.now = utcnow()

    async def run(self) -> list[CheckResult]:
        """Run every check once; their results, in order."""
        results = [self.check_config()]
        core = await build_core(self.settings, ensure_indexes=False, sink=NullSink())
        try:
            mongo = await self._guarded("mongodb", self.check_mongo(core))
            redis = await self._guarded("redis", self.check_redis(core))
            results += [mongo, redis]
            if mongo.status == PASS:
                results.append(await self._guarded("indexes", self.check_indexes(core)))
                results.append(await self._guarded("channels", self.check_channels(core)))
                results.append(await self._guarded("subscriptions", self.check_subscriptions(core), timeout_factor=3))
            else:
                results += [
                    self._skipped(n, "MongoDB is not reachable") for n in ("indexes", "channels", "subscriptions")
                ]
            if redis.status == PASS:
                results.append(await self._guarded("pubsub", self.check_pubsub(core)))
            else:
                results.append(self._skipped("pubsub", "Redis is not reachable"))
            if mongo.status == PASS:
                results.append(await self._guarded("pipeline", self.check_pipeline(core), timeout_factor=3))
                results.append(await self._guarded("trigger_outbox", self.check_trigger_outbox(core)))
                results.append(await self._guarded("media", self.check_media(core)))
            else:
                results += [
                    self._skipped(n, "MongoDB is not reachable") for n in ("pipeline", "trigger_outbox", "media")
                ]
            if self.server_url:
                server, signatures = await self.check_server(core, mongo.status == PASS)
                results += [server, signatures]
        finally:
            await core.close()
        return results

    async def _guarded(self, name: str, check: Awaitable[CheckResult], timeout_factor: float = 1) -> CheckResult:
        try:
            return await asyncio.wait_for(check, self.timeout_secs * timeout_factor)
        except TimeoutError:
            return CheckResult(name, FAIL, f"no answer within {self.timeout_secs * timeout_factor:g} s", _ADVICE[name])
        except Exception as exc:  # the check's own subject failed: say how, never crash the report
            return CheckResult(name, FAIL, f"failed: {type(exc).__name__}: {_short(exc)}", _ADVICE[name])

    @staticmethod
    def _skipped(name: str, why: str) -> CheckResult:
        return CheckResult(name, SKIP, f"skipped: {why}")

    # -- checks ----------------------------------------------------------------------------

    def check_config(self) -> CheckResult:
        """Secrets and settings: missing, weak or contradictory ones."""
        s = self.settings
        problems = list(self.config_problems)
        for problem in (
            _secret_problem("IGSYNC_APP_SECRET", s.app_secret, "every webhook is refused with 401 invalid_signature"),
            _secret_problem("IGSYNC_VERIFY_TOKEN", s.verify_token, "Meta's subscription handshake is refused (403)"),
        ):
            if problem:
                problems.append(problem)
        mode = "embedded (dev secrets from the data directory)" if self.embedded else "production (store URLs given)"
        details = {"mode": mode, "app_secret_set": bool(s.app_secret), "verify_token_set": bool(s.verify_token)}
        if problems:
            return CheckResult(
                "config",
                FAIL,
                problems[0],
                "Set IGSYNC_APP_SECRET to the App Secret of your Meta app (App Dashboard → App settings → "
                "Basic) and IGSYNC_VERIFY_TOKEN to the token you typed in the webhook subscription, then restart.",
                details,
                problems[1:],
            )
        return CheckResult("config", PASS, f"webhook secret and verify token are set; mode: {mode}", details=details)

    async def check_mongo(self, core: Core) -> CheckResult:
        """MongoDB answers; its version and round trip."""
        started = time.perf_counter()
        await core.store.ping()
        version = await core.store.server_version()
        elapsed = _ms(started)
        where = public_url(self.settings.mongo_url)
        return CheckResult(
            "mongodb",
            PASS,
            f"reachable at {where} (version {version}, {elapsed} ms)",
            details={"url": where, "version": version, "ms": elapsed},
        )

    async def check_redis(self, core: Core) -> CheckResult:
        """Redis answers; its version and round trip."""
        topology = RedisTopology.of(self.settings)
        started = time.perf_counter()
        await core.redis.ping()
        # On a cluster, INFO of one node (the others run the same build, as a cluster requires).
        on_one_node = {"target_nodes": "random"} if topology.cluster else {}
        info = await core.redis.info("server", **on_one_node)
        elapsed = _ms(started)
        version = str(info.get("redis_version", "unknown"))
        label = f"Redis {version}"
        if info.get("valkey_version"):
            label += f" / Valkey {info['valkey_version']}"
        where = public_url(self.settings.redis_url) if topology.kind == "single" else topology.describe()
        return CheckResult(
            "redis",
            PASS,
            f"reachable at {where} ({label}, {elapsed} ms)",
            details={"url": where, "version": version, "server": label, "ms": elapsed},
        )

    async def check_indexes(self, core: Core) -> CheckResult:
        """Every index igsync relies on exists with the right options."""
        planned = await diagnostics.planned_indexes(core.store)
        problems = await diagnostics.index_problems(core.store, planned)
        details = {"expected": len(planned), "problems": problems}
        if problems:
            return CheckResult(
                "indexes",
                FAIL,
                f"{len(problems)} of {len(planned)} indexes missing or different ({problems[0]})",
                "Restart igsync: it creates missing indexes at start-up. If one still fails, the server log "
                "says why (a unique index cannot be built over duplicate documents).",
                details,
                problems[1:],
            )
        return CheckResult("indexes", PASS, f"all {len(planned)} indexes present", details=details)

    async def check_channels(self, core: Core) -> CheckResult:
        """Connected channels: webhooks arriving, tokens valid, nothing silent."""
        store = core.store
        channels = [c for c in await store.channels.list() if c.get("is_connect") and not c.get("doctor_test")]
        if not channels:
            return CheckResult(
                "channels",
                FAIL,
                "no channel is connected: every webhook is ignored as unknown_channel",
                "Connect the Instagram account: igsync channel add --page-id <account id> --username <name> "
                "--owner-id <id> --owner-email <email> (the account id is entry.id of Meta's webhooks).",
            )
        rows, lines, failures, warnings = [], [], [], []
        known: set[str] = set()
        for channel in channels:
            ids = sorted(channel_account_ids(channel))
            known.update(ids)
            last = await store.webhook_events.last_received(ids)
            recent = await diagnostics.count_messages_since(store, channel["_id"], self.now - RECENT_WINDOW)
            token = self._token_state(channel)
            name = f"@{channel.get('username')}"
            row = {
                "id": str(channel["_id"]),
                "username": channel.get("username"),
                "page_id": channel["page_id"],
                "instagram_user_id": channel.get("instagram_user_id"),
                "last_webhook_at": iso(last),
                "messages_last_hour": recent,
                "token": token["state"],
                "token_expires_at": iso(token.get("expires_at")),
            }
            rows.append(row)
            lines.append(
                f"{name} page_id={channel['page_id']}: last webhook {ago(last, self.now)}, "
                f"{recent} messages in the last hour, access token {token['text']}"
            )
            if token["state"] in ("needs_reauth", "expired"):
                failures.append(f"{name}: access token {token['text']}")
            elif token["state"] == "expiring":
                warnings.append(f"{name}: access token {token['text']}")
            if last is None:
                warnings.append(f"{name}: no webhook received in the last {self.settings.webhook_events_ttl_days} days")
        unmatched = await diagnostics.unmatched_accounts(store, known, self.now - UNMATCHED_WINDOW)
        unmatched = {
            k: v for k, v in unmatched.items() if k != META_TEST_ACCOUNT and not k.startswith(DOCTOR_ACCOUNT_PREFIX)
        }
        if unmatched:
            listed = ", ".join(f"{k} ({v} bodies)" for k, v in unmatched.items())
            warnings.append(f"webhooks in the last 24 h for accounts no channel has: {listed}")
        details = {"channels": rows, "unmatched_accounts": unmatched}
        summary = f"{len(channels)} connected"
        if failures:
            return CheckResult(
                "channels",
                FAIL,
                f"{summary}; {failures[0]}",
                "Reconnect the account with a fresh access token (POST /api/v1/channels with the same page_id, "
                "or igsync channel add --access-token-env VAR); profile and media look-ups fail until then.",
                details,
                lines + failures[1:] + warnings,
            )
        if warnings:
            return CheckResult(
                "channels",
                WARN,
                f"{summary}; {warnings[0]}",
                "No webhook yet: check the Meta app's webhook subscription (callback URL reachable from the "
                "internet, the fields igsync needs subscribed — see the subscriptions check and igsync channel "
                "subscribe — the app installed on the account). "
                "Webhooks for an unknown account id: connect that id, or set it as the channel's "
                "instagram_user_id.",
                details,
                lines + warnings[1:],
            )
        return CheckResult("channels", PASS, summary, details=details, lines=lines)

    def _token_state(self, channel: dict[str, Any]) -> dict[str, Any]:
        if channel.get("needs_reauth"):
            return {"state": "needs_reauth", "text": "rejected by Instagram (needs re-authorisation)"}
        expires = channel.get("token_expires_at")
        if isinstance(expires, dt.datetime):
            if expires.tzinfo is None:
                expires = expires.replace(tzinfo=dt.UTC)
            if expires <= self.now:
                return {"state": "expired", "text": f"expired {ago(expires, self.now)}", "expires_at": expires}
            days = (expires - self.now).days
            state = "expiring" if expires - self.now < TOKEN_EXPIRY_WARNING else "ok"
            return {"state": state, "text": f"expires in {days} days", "expires_at": expires}
        if channel.get("access_token"):
            return {"state": "unknown_expiry", "text": "set (expiry unknown)"}
        return {"state": "absent", "text": "not set (profiles and media look-ups are skipped)"}

    async def check_subscriptions(self, core: Core) -> CheckResult:
        """Each connected account's webhook subscription, asked of Meta now; a subscribed but
        silent account is told apart from one that is not subscribed."""
        channels = [c for c in await core.store.channels.list() if c.get("is_connect")]
        rows, failures, warnings, lines = [], [], [], []
        for channel in channels:
            name = f"@{channel.get('username')} ({login_of(channel)})"
            if not channel.get("access_token") or channel.get("needs_reauth"):
                lines.append(f"{name}: not asked (no token Meta accepts)")
                continue
            state = await core.accounts.subscription(channel)
            rows.append({"id": str(channel["_id"]), **shown_subscription(state)})
            last = channel.get("last_webhook_at")
            if state["state"] in (NOT_SUBSCRIBED, INCOMPLETE):
                failures.append(
                    f"{name}: {state['state'].replace('_', ' ')}; missing {', '.join(state['missing'])} — "
                    f"run igsync channel subscribe {channel['_id']}"
                )
            elif state["state"] != SUBSCRIBED:
                warnings.append(f"{name}: Meta could not be asked ({state.get('error')})")
            elif last is None or self.now - last > SUBSCRIBED_BUT_SILENT:
                warnings.append(
                    f"{name}: Meta lists it subscribed, yet no webhook since {ago(last, self.now)} — Meta is not "
                    "delivering: check the callback URL is reachable, the app is Live, and the account allows "
                    "access to messages (Instagram app → Settings → Messages → Connected tools)"
                )
            else:
                lines.append(f"{name}: subscribed to {', '.join(state['fields'])}")
        details = {"channels": rows}
        if failures:
            return CheckResult("subscriptions", FAIL, failures[0], _ADVICE["subscriptions"], details, failures[1:])
        if warnings:
            return CheckResult("subscriptions", WARN, warnings[0], _ADVICE["subscriptions"], details, warnings[1:])
        return CheckResult("subscriptions", PASS, f"{len(rows)} subscribed", details=details, lines=lines)

    async def check_pubsub(self, core: Core) -> CheckResult:
        """Redis pub/sub carries a message between two connections (sharded on a cluster, as
        the hub uses it)."""
        topology = RedisTopology.of(self.settings)
        timeout_ms = int(self.timeout_secs * 1000)
        topic = f"igsync:doctor:{{{uuid.uuid4().hex}}}"
        payload = uuid.uuid4().hex.encode()
        if topology.sharded:
            node = core.redis.get_node_from_key(topic)
            listener = topology.node_client(node.host, node.port, timeout_ms=timeout_ms)
        else:
            listener = topology.client(timeout_ms=timeout_ms)
        pubsub = listener.pubsub()
        try:
            await (pubsub.ssubscribe(topic) if topology.sharded else pubsub.subscribe(topic))
            await pubsub.get_message(timeout=self.timeout_secs)  # the subscribe confirmation
            started = time.perf_counter()
            publish = core.redis.spublish if topology.sharded else core.redis.publish
            receivers = await publish(topic, payload)
            deadline = time.monotonic() + self.timeout_secs
            while time.monotonic() < deadline:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.5)
                if message and message.get("data") == payload:
                    elapsed = _ms(started)
                    return CheckResult(
                        "pubsub",
                        PASS,
                        f"a message published on one connection arrived on another in {elapsed} ms",
                        details={"ms": elapsed},
                    )
            return CheckResult(
                "pubsub",
                FAIL,
                f"published to {receivers} subscribers but nothing arrived within {self.timeout_secs:g} s",
                _ADVICE["pubsub"],
            )
        finally:
            await pubsub.aclose()
            await listener.aclose()

    async def check_pipeline(self, core: Core) -> CheckResult:
        """A signed test webhook goes through the whole pipeline and is cleaned up."""
        secret = self.settings.app_secret
        if not secret:
            return CheckResult("pipeline", SKIP, "skipped: no IGSYNC_APP_SECRET to sign the test webhook with")
        run = _digits()
        page_id = f"{DOCTOR_ACCOUNT_PREFIX}{run}"
        mid = f"igsync-doctor-mid-{run}"
        now_ms = int(time.time() * 1000)
        body = orjson.dumps(
            {
                "object": "instagram",
                "entry": [
                    {
                        "id": page_id,
                        "time": now_ms,
                        "messaging": [
                            {
                                "sender": {"id": f"{DOCTOR_ACCOUNT_PREFIX}1{run}"},
                                "recipient": {"id": page_id},
                                "timestamp": now_ms,
                                "message": {"mid": mid, "text": "igsync doctor test message"},
                            }
                        ],
                    }
                ],
            }
        )
        signature = sign(body, secret)
        channel = await diagnostics.create_test_channel(core.store, page_id)
        core.channels.invalidate()
        removed: dict[str, int] = {}
        try:
            started = time.perf_counter()
            first = await core.pipeline.handle_post(body, signature, received_at=time.time())
            elapsed = _ms(started)
            if first.status != 200 or "data" not in first.body:
                return CheckResult(
                    "pipeline",
                    FAIL,
                    f"the test webhook answered {first.status}: {_short(first.body)}",
                    _ADVICE["pipeline"],
                )
            stored = await core.store.messages.find_by_mid(channel["_id"], mid)
            again = await core.pipeline.handle_post(body, signature, received_at=time.time())
            if stored is None or not again.body.get("duplicate"):
                return CheckResult(
                    "pipeline",
                    FAIL,
                    "the test message was not stored exactly once "
                    f"(stored: {stored is not None}, redelivery answered {_short(again.body)})",
                    _ADVICE["pipeline"],
                )
        finally:
            await core.audit.flush()  # its copies are written after the answers; then removed
            removed = await diagnostics.purge_test_channel(core.store, channel["_id"], [page_id])
            core.channels.invalidate()
        cleaned = ", ".join(f"{n} {k}" for k, n in removed.items() if n)
        return CheckResult(
            "pipeline",
            PASS,
            f"a signed test message was stored in {elapsed} ms and its redelivery recognised as a duplicate "
            f"(layer {again.body.get('layer')}); test data removed ({cleaned})",
            details={"ms": elapsed, "duplicate_layer": again.body.get("layer"), "removed": removed},
        )

    async def check_trigger_outbox(self, core: Core) -> CheckResult:
        """The trigger outbox is being drained."""
        outbox = await diagnostics.trigger_outbox_state(core.store)
        if not outbox.exists:
            return CheckResult("trigger_outbox", SKIP, "skipped: workflow triggers are not in use (no outbox yet)")
        details: dict[str, Any] = {"pending": outbox.pending, "dead": outbox.dead, "oldest_created_at": None}
        dead = f"; {outbox.dead} dead-lettered" if outbox.dead else ""
        if outbox.oldest_pending is None:
            status = WARN if outbox.dead else PASS
            advice = _ADVICE["trigger_outbox"] if outbox.dead else ""
            return CheckResult("trigger_outbox", status, f"no undelivered trigger jobs{dead}", advice, details)
        created = outbox.oldest_pending.get("created_at")
        known = isinstance(created, dt.datetime)
        details["oldest_created_at"] = iso(created) if known else None
        when = ago(created, self.now) if known else "at an unknown time"
        text = f"{outbox.pending} undelivered, the oldest created {when}{dead}"
        if outbox.dead or (known and self.now - created > OUTBOX_STUCK_AFTER):
            return CheckResult("trigger_outbox", WARN, text, _ADVICE["trigger_outbox"], details)
        return CheckResult("trigger_outbox", PASS, text, details=details)

    async def check_media(self, core: Core) -> CheckResult:
        """Media downloads are taken by a worker; failures are listed."""
        queue = await diagnostics.media_queue_state(core.store, self.now)
        if not queue.exists:
            return CheckResult("media", SKIP, "skipped: no attachment downloaded yet")
        due = (queue.oldest_due or {}).get("next_attempt_at")
        details: dict[str, Any] = {"pending": queue.pending, "failed": queue.failed, "oldest_due_at": iso(due)}
        failed = f"; {queue.failed} failed for good (igsync media list-failed)" if queue.failed else ""
        if isinstance(due, dt.datetime) and self.now - due > MEDIA_STUCK_AFTER:
            text = f"{queue.pending} downloads waiting, one due since {ago(due, self.now)}{failed}"
            return CheckResult("media", WARN, text, _ADVICE["media"], details)
        return CheckResult("media", PASS, f"{queue.pending} downloads waiting, none overdue{failed}", details=details)

    async def check_server(self, core: Core, mongo_ok: bool) -> tuple[CheckResult, CheckResult]:
        """The running server, over HTTP: health, readiness, handshake, a signed test webhook, and
        its count of webhooks refused for their signature (read before our own request)."""
        base = self.server_url
        client = AsyncHTTPClient(force_instance=True)
        try:
            try:
                await self._http(client, "GET", "/healthz")
            except (OSError, HTTPClientError) as exc:
                skipped = self._skipped("webhook_signatures", "the server does not answer")
                return (
                    CheckResult(
                        "server",
                        FAIL,
                        f"no igsync answers at {base} ({type(exc).__name__}: {_short(exc)})",
                        "Start the server (igsync serve), or pass --url with the address it listens on.",
                    ),
                    skipped,
                )
            signatures = await self._signature_counts(client)
            problems = []
            ready = await self._http(client, "GET", "/readyz", raise_error=False)
            if ready.code != 200:
                problems.append(f"/readyz answers {ready.code} {ready.body.decode(errors='replace')[:120]}")
            problems += await self._check_handshake(client)
            test_account = f"{DOCTOR_ACCOUNT_PREFIX}2{_digits()}"
            accepted, webhook_problems = await self._check_signed_webhook(client, test_account)
            problems += webhook_problems
            if mongo_ok:
                if accepted:
                    # The server writes its audit copy after answering (server/ingest/audit.py):
                    # wait for it, or it would be written after this clean-up.
                    await diagnostics.wait_for_audit_rows(core.store, [test_account], AUDIT_WAIT_SECS)
                await diagnostics.delete_audit_rows(core.store, [test_account])
        finally:
            client.close()
        details = {"url": base}
        if problems:
            server = CheckResult("server", FAIL, f"{base}: {problems[0]}", _ADVICE["server"], details, problems[1:])
        else:
            server = CheckResult(
                "server",
                PASS,
                f"{base} is ready, accepts the verify token and a webhook signed with this app secret",
                details=details,
            )
        return server, signatures

    async def _check_handshake(self, client: AsyncHTTPClient) -> list[str]:
        """Meta's subscription handshake with this configuration's verify token; the problems found."""
        problems: list[str] = []
        challenge = uuid.uuid4().hex
        query = urlencode(
            {
                "hub.mode": "subscribe",
                "hub.verify_token": self.settings.verify_token or "",
                "hub.challenge": challenge,
            }
        )
        handshake = await self._http(client, "GET", f"/webhooks/instagram?{query}", raise_error=False)
        if handshake.code != 200 or handshake.body.decode(errors="replace") != challenge:
            problems.append(
                f"the handshake with IGSYNC_VERIFY_TOKEN answered {handshake.code}: the server runs with a "
                "different verify token than this configuration"
            )
        return problems

    async def _check_signed_webhook(self, client: AsyncHTTPClient, test_account: str) -> tuple[bool, list[str]]:
        """A test webhook signed with this configuration's app secret: whether it was accepted
        (200), and the problems found."""
        problems: list[str] = []
        body = orjson.dumps(
            {
                "object": "instagram",
                "entry": [
                    {
                        "id": test_account,
                        "time": int(time.time() * 1000),
                        "changes": [{"field": "messages", "value": _META_TEST_VALUE}],
                    }
                ],
            }
        )
        posted = await self._http(
            client,
            "POST",
            "/webhooks/instagram",
            body=body,
            headers={
                "Content-Type": "application/json",
                "X-Hub-Signature-256": sign(body, self.settings.app_secret or ""),
            },
            raise_error=False,
        )
        if posted.code == 401:
            problems.append(
                "the server refused a webhook signed with IGSYNC_APP_SECRET (401 invalid_signature): "
                "it runs with a different app secret than this configuration"
            )
        elif posted.code != 200:
            problems.append(f"a signed test webhook answered {posted.code}")
        return posted.code == 200, problems

    async def _signature_counts(self, client: AsyncHTTPClient) -> CheckResult:
        headers = {"Authorization": f"Bearer {self.settings.metrics_token}"} if self.settings.metrics_token else {}
        response = await self._http(client, "GET", "/metrics", headers=headers, raise_error=False)
        if response.code != 200:
            return self._skipped("webhook_signatures", f"/metrics answered {response.code}")
        outcomes: dict[str, float] = {}
        for family in text_string_to_metric_families(response.body.decode(errors="replace")):
            if family.name != "igsync_webhook_requests":
                continue
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    outcomes[sample.labels.get("outcome", "")] = sample.value
        refused = int(outcomes.get("invalid_signature", 0))
        accepted = int(
            sum(v for k, v in outcomes.items() if k not in ("invalid_signature", "too_large", "bad_request"))
        )
        details = {"refused_signature": refused, "accepted": accepted}
        text = f"since the server started: {accepted} webhooks accepted, {refused} refused for their signature"
        # Meta retries a refused delivery for hours, so with a wrong secret refusals soon outnumber
        # everything accepted before the secret went wrong; a few stray 401s (scanners) do not.
        if refused > accepted:
            return CheckResult("webhook_signatures", FAIL, text, _ADVICE["webhook_signatures"], details)
        if refused:
            return CheckResult("webhook_signatures", WARN, text, _ADVICE["webhook_signatures"], details)
        return CheckResult("webhook_signatures", PASS, text, details=details)

    async def _http(self, client: AsyncHTTPClient, method: str, path: str, **kwargs: Any) -> Any:
        raise_error = kwargs.pop("raise_error", True)
        request = HTTPRequest(
            f"{self.server_url}{path}",
            method=method,
            request_timeout=self.timeout_secs,
            connect_timeout=self.timeout_secs,
            **kwargs,
        )
        return await client.fetch(request, raise_error=raise_error)


# The App Dashboard's sample: acknowledged as a test by the server, never stored as a message.
_META_TEST_VALUE = {
    "sender": {"id": "12334"},
    "recipient": {"id": "23245"},
    "timestamp": "1527459824",
    "message": {"mid": "random_mid", "text": "igsync doctor"},
}

_ADVICE = {
    "mongodb": "Check IGSYNC_MONGO_URL (host, port, credentials, replica set name) and that the server runs; "
    "webhooks answer 503 and Meta retries until it is back.",
    "redis": "Check IGSYNC_REDIS_URL and that Redis runs. Without it live updates stop reaching other "
    "processes' inboxes and dedup falls back to MongoDB alone.",
    "indexes": "Restart igsync: it creates missing indexes at start-up.",
    "channels": "Check MongoDB; the channels collection could not be read.",
    "subscriptions": "Instagram-Login accounts need messages, message_edit, message_reactions, messaging_postbacks, "
    "messaging_referral and messaging_seen; Facebook-Login (Page) accounts need messages, message_echoes, "
    "message_edits, message_reactions, message_reads, messaging_postbacks and messaging_referrals. "
    "igsync channel subscribe <channel id> subscribes them; docs/accounts.md.",
    "pubsub": "Live updates travel over Redis pub/sub between processes. A proxy in front of Redis that does "
    "not support pub/sub, or a Redis Cluster without pub/sub forwarding, stops them: point IGSYNC_REDIS_URL "
    "at Redis itself.",
    "pipeline": "Run the server with the same settings and read its log for the test message: a MongoDB error "
    "(503) or an unexpected exception (500) shows there.",
    "trigger_outbox": "Jobs wait when the receiver fails or the dispatcher is stopped: check the receiver URL and "
    "the server log; dead letters are listed by GET /api/v1/triggers/dead and retried with igsync triggers retry.",
    "media": "Downloads wait when no process runs media workers: every process with IGSYNC_MEDIA_CONCURRENCY=0 "
    "is web-only, so start one with workers (the default is 4). Failed downloads are listed by igsync media "
    "list-failed and queued again by igsync media retry.",
    "server": "Give the server and this command the same IGSYNC_* settings. Meta signs every webhook with the App "
    "Secret (App Dashboard → App settings → Basic) and sends the verify token you typed in the webhook "
    "subscription: both must match the server's.",
    "webhook_signatures": "Meta's deliveries are refused when IGSYNC_APP_SECRET differs from the App Secret of the "
    "Meta app that sends them (App Dashboard → App settings → Basic). Scanners and tests also get 401s; "
    "if every webhook is refused, the secret is wrong.",
}


def _short(value: Any, limit: int = 160) -> str:
    text = value if isinstance(value, str) else str(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


# -- output -----------------------------------------------------------------------------------

LABELS = {PASS: "PASS", FAIL: "FAIL", WARN: "WARN", SKIP: "SKIP"}


def render_text(results: list[CheckResult]) -> str:
    """The checks as aligned text, advice under each failure."""
    width = max(len(r.name) for r in results)
    out = []
    for r in results:
        out.append(f"{LABELS[r.status]}  {r.name:<{width}}  {r.summary}")
        for line in r.lines:
            out.append(f"{'':6}{'':<{width}}  · {line}")
        if r.advice and r.status in (FAIL, WARN):
            out.append(f"{'':6}{'':<{width}}  → {r.advice}")
    counts = {s: sum(1 for r in results if r.status == s) for s in (PASS, FAIL, WARN, SKIP)}
    verdict = "everything checked is working" if not counts[FAIL] else "fix the FAIL lines above, top to bottom"
    out.append(
        f"Summary: {counts[PASS]} pass, {counts[FAIL]} fail, {counts[WARN]} warn, {counts[SKIP]} skip — {verdict}."
    )
    return "\n".join(out)


def render_json(results: list[CheckResult]) -> str:
    """The checks as JSON."""
    body = {"ok": not any(r.status == FAIL for r in results), "checks": [r.as_json() for r in results]}
    return orjson.dumps(body, option=orjson.OPT_INDENT_2).decode()


def exit_code(results: list[CheckResult]) -> int:
    """1 when a check failed, else 0."""
    return 1 if any(r.status == FAIL for r in results) else 0


def _digits() -> str:
    """Twelve random digits: a run's part of the doctor's throw-away ids."""
    return f"{secrets.randbelow(10**12):012d}"
