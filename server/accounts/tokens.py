"""Instagram-Login tokens refreshed before they expire, once across processes.

Owns :class:`TokenRefresher`. Meta's long-lived Instagram-Login tokens live 60 days and can be
refreshed (``refresh_access_token``) once they are a day old and while still valid; a
Facebook-Login Page token does not expire this way and is left alone. The schedule is the
channel document itself — ``token_set_at`` and ``token_expires_at`` — so it survives restarts:
every ``token_check_secs`` (and at start-up) each process looks for tokens due (expiring
within ``token_refresh_before_days``, or of unknown expiry and a day old: the refresh's answer
tells the expiry), *claims* each one (a guarded update on its lease: of several processes one
refreshes) and stores the new token only if the channel still holds the one it refreshed
(a reconnect meanwhile wins).

Outcomes are counted (``igsync_token_refreshes_total{outcome}``); the soonest expiry of any
connected channel is ``igsync_channel_token_expiry_seconds`` (alerted a week ahead). A
refused token (190) marks the channel ``needs_reauth`` through
:class:`~server.graph.health.ChannelHealth`; a transient failure is tried again at the next
check.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from models.channels import INSTAGRAM_LOGIN, login_of
from models.store import Store
from models.timeutil import utcnow
from server.graph.client import TOKEN_EXPIRED, GraphAccount, GraphApiClient, GraphApiError
from server.graph.health import ChannelHealth
from server.ops.loops import PollingLoop
from server.ops.metrics import Metrics

log = logging.getLogger("igsync.tokens")

# Meta refreshes a long-lived token only once it is at least a day old.
MIN_TOKEN_AGE = dt.timedelta(days=1)


def refresh_due(channel: dict[str, Any], now: dt.datetime, before: dt.timedelta) -> bool:
    """Whether the channel's token should be refreshed now."""
    if login_of(channel) != INSTAGRAM_LOGIN or not channel.get("access_token") or channel.get("needs_reauth"):
        return False
    if not channel.get("is_connect"):
        return False
    set_at = channel.get("token_set_at") or channel.get("connected_at") or channel.get("created_at")
    if set_at is None or now - set_at < MIN_TOKEN_AGE:
        return False
    expires = channel.get("token_expires_at")
    if expires is not None and expires <= now:
        return False  # expired: only a reconnect helps (doctor and the alert say so)
    return expires is None or expires - now <= before


class TokenRefresher:
    def __init__(
        self,
        store: Store,
        graph: GraphApiClient,
        health: ChannelHealth,
        metrics: Metrics,
        *,
        check_secs: float,
        refresh_before_days: float,
    ) -> None:
        self.store = store
        self.graph = graph
        self.health = health
        self.metrics = metrics
        self.before = dt.timedelta(days=refresh_before_days)
        # A claim outlives one refresh call comfortably; a process that dies holding it frees it then.
        self.lease = dt.timedelta(seconds=max(60.0, graph.timeout_secs * 3))
        self.loop = PollingLoop("token refresher", self.check, poll_secs=check_secs, stop_wait_secs=10.0, log=log)

    async def start(self) -> None:
        """Check now, then every ``check_secs``."""
        self.loop.start()

    async def stop(self) -> None:
        """Stop checking."""
        await self.loop.stop()
        self.graph.close()

    def wake(self) -> None:
        """Check now (a channel was connected)."""
        self.loop.wake()

    async def check(self) -> bool:
        """Refresh every token that is due; update the expiry and re-authorisation gauges."""
        now = utcnow()
        channels = [c for c in await self.store.channels.list() if c.get("is_connect")]
        for channel in channels:
            if refresh_due(channel, now, self.before) and await self.store.channels.claim_token_refresh(
                channel, now, self.lease
            ):
                await self.refresh(channel)
        # Read again: a refresh just moved its channel's expiry, and the gauge must show the new one.
        await self.update_gauges()
        return False

    async def refresh(self, channel: dict[str, Any]) -> str:
        """Refresh one claimed channel's token; the outcome (TOKEN_REFRESH_OUTCOMES)."""
        account = GraphAccount.of(channel)
        assert account is not None
        try:
            token, expires_in = await self.graph.refresh_token(account)
        except GraphApiError as exc:
            if exc.category == TOKEN_EXPIRED:
                await self.health.token_rejected(channel, by="refresh")
                outcome = "rejected"
            else:
                outcome = "transient_error"
            self.metrics.token_refreshes.labels(outcome=outcome).inc()
            log.warning(
                "token refresh of channel %s: %s (code=%s subcode=%s)", channel["_id"], outcome, exc.code, exc.subcode
            )
            return outcome
        expires_at = utcnow() + dt.timedelta(seconds=expires_in)
        stored = await self.store.channels.replace_token(channel, token, expires_at)
        self.metrics.token_refreshes.labels(outcome="refreshed").inc()
        log.info(
            "token refresh of channel %s: refreshed, expires %s%s",
            channel["_id"],
            expires_at.isoformat(),
            "" if stored else " (not stored: the channel was reconnected meanwhile)",
        )
        return "refreshed"

    async def update_gauges(self) -> None:
        """``igsync_channel_token_expiry_seconds`` (soonest) and ``igsync_channels_needing_reauth``."""
        now = utcnow()
        channels = [c for c in await self.store.channels.list() if c.get("is_connect")]
        expiries = [
            (c["token_expires_at"] - now).total_seconds()
            for c in channels
            if c.get("token_expires_at") is not None and c.get("access_token") and not c.get("needs_reauth")
        ]
        self.metrics.token_expiry.set(min(expiries) if expiries else float("inf"))
        self.metrics.channels_needing_reauth.set(sum(1 for c in channels if c.get("needs_reauth")))
