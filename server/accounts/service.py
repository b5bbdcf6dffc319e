"""Connecting a channel and keeping it connected: the admin side of accounts.

Owns :class:`AccountsService`: connect or reconnect a channel (its kind, token and expiry),
subscribe the account to the webhook fields igsync handles and read the subscription back,
what a reconnect after ``needs_reauth`` sets going again (profile look-ups, media copies and
sends that waited on the token, history runs it stopped, and a repair of the conversations
Meta may not have sent meanwhile), and history imports for the admin API and the CLI.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from models import history_runs as runs_model
from models import serializers
from models.ids import as_object_id
from models.store import Store
from models.timeutil import iso, parse_iso, utcnow
from server.accounts.gaps import GapWatch
from server.accounts.history import TOKEN_REFUSED, progress_of
from server.api.errors import ApiError, not_found
from server.api.schemas import CHANNEL_INPUT, HISTORY_INPUT, load
from server.graph.client import TOKEN_EXPIRED, WEBHOOK_FIELDS, GraphAccount, GraphApiClient, GraphApiError
from server.graph.health import ChannelHealth
from server.graph.profiles import ProfileService
from server.inbox import events as ev
from server.inbox.threads import ChannelCache

log = logging.getLogger("igsync.accounts")

SUBSCRIBED = "subscribed"
INCOMPLETE = "incomplete"
NOT_SUBSCRIBED = "not_subscribed"
UNKNOWN = "unknown"


def subscription_state(login: str, fields: list[str] | None) -> dict[str, Any]:
    """What Meta's list of subscribed fields means for igsync: which of its fields are missing."""
    wanted = WEBHOOK_FIELDS[login]
    if fields is None:
        return {"state": NOT_SUBSCRIBED, "fields": [], "missing": list(wanted)}
    missing = [f for f in wanted if f not in fields]
    return {"state": INCOMPLETE if missing else SUBSCRIBED, "fields": fields, "missing": missing}


class AccountsService:
    def __init__(
        self,
        *,
        store: Store,
        channel_cache: ChannelCache,
        graph: GraphApiClient,
        health: ChannelHealth,
        publish: Callable[[list[ev.Event]], Awaitable[None]],
        profiles: ProfileService,
        gaps: GapWatch,
        wake: dict[str, Callable[[], None]],
    ) -> None:
        self.store = store
        self.channel_cache = channel_cache
        self.graph = graph
        self.health = health
        self.publish = publish
        self.profiles = profiles
        self.gaps = gaps
        # Who to wake when work was queued: "media", "sends", "history", "tokens".
        self.wake = wake
        self._background: set[asyncio.Task[Any]] = set()

    # -- connecting --------------------------------------------------------------------

    async def connect_channel(self, payload: Any, *, subscribe_now: bool = False) -> tuple[int, dict[str, Any]]:
        """Connect (or reconnect) a channel from an admin's payload; (status, body).

        The subscription is made in the background (Meta may be slow; the admin's answer is
        not held for it) unless ``subscribe_now`` (the CLI waits and prints it); either way it
        is read back and stored on the channel. A reconnect that lifts ``needs_reauth`` is
        announced (``channel_updated``)."""
        data = load(CHANNEL_INPUT, payload)
        page_id = data.pop("page_id")
        expires_in = data.pop("token_expires_in", None)
        if data.get("access_token") and expires_in is not None:
            data["token_expires_at"] = utcnow() + dt.timedelta(seconds=expires_in)
        previous = await self.store.channels.find_by_page_id(page_id)
        channel, created = await self.store.channels.connect(page_id, data)
        self.channel_cache.invalidate()
        # Decided on what was asked, not on the channel read back: a refusal of the old token
        # may land between the update and the read-back (the new token is what counts).
        if previous is not None and previous.get("needs_reauth") and data.get("access_token"):
            await self.reauthorised(channel, previous.get("needs_reauth_since") or previous.get("updated_at"))
        self.wake["tokens"]()
        if channel.get("access_token"):
            if subscribe_now:
                await self.subscribe(channel)
                channel = await self.store.channels.get(channel["_id"]) or channel
            else:
                self._in_background(self.subscribe(channel))
        if previous is not None and previous.get("needs_reauth") != channel.get("needs_reauth"):
            # The inbox shows "reconnect this account" until now: tell it. (Other changes of an
            # admin's connect are not live news: the inbox reads channels when it starts.)
            await self.publish([ev.channel_updated(channel)])
        return (201 if created else 200), {"channel": serializers.channel(channel)}

    async def reauthorised(self, channel: dict[str, Any], since: dt.datetime | None) -> dict[str, int]:
        """The channel has a token Meta may accept again: what waited on it goes again."""
        customers = await self.store.customers.awaiting_reauth(channel["_id"])
        self.profiles.look_up_again(channel["_id"], customers)
        media = await self.store.media_jobs.requeue_failed(None, channel_id=channel["_id"])
        sends = await self.store.outbound.requeue_awaiting_reauth(channel["_id"])
        runs = await self.store.history_runs.requeue_failed(channel["_id"], TOKEN_REFUSED)
        if since is not None:
            await self.gaps.channel_gap(channel, since)
        for name in ("media", "sends", "history"):
            self.wake[name]()
        counts = {"profiles": len(customers), "media": media, "sends": sends, "history_runs": runs}
        log.info("channel %s reconnected after needs_reauth: queued again %s", channel["_id"], counts)
        return counts

    # -- subscriptions -------------------------------------------------------------------

    async def subscribe(self, channel: dict[str, Any]) -> dict[str, Any]:
        """Subscribe the account to igsync's webhook fields, read it back, store the outcome."""
        account = GraphAccount.of(channel)
        if account is None:
            return {"state": UNKNOWN, "error": "no access token"}
        try:
            await self.graph.subscribe(account, WEBHOOK_FIELDS[account.login])
        except GraphApiError as exc:
            return await self._subscription_failed(channel, exc)
        return await self.subscription(channel)

    async def subscription(self, channel: dict[str, Any]) -> dict[str, Any]:
        """The account's subscription as Meta lists it now (stored on the channel too)."""
        account = GraphAccount.of(channel)
        if account is None:
            return {"state": UNKNOWN, "error": "no access token"}
        try:
            fields = await self.graph.subscribed_fields(account)
        except GraphApiError as exc:
            return await self._subscription_failed(channel, exc)
        state = {**subscription_state(account.login, fields), "checked_at": utcnow(), "error": None}
        await self.store.channels.set_fields(channel["_id"], {"subscription": state})
        return state

    async def _subscription_failed(self, channel: dict[str, Any], exc: GraphApiError) -> dict[str, Any]:
        if exc.category == TOKEN_EXPIRED:
            await self.health.token_rejected(channel, by="subscription")
        error = f"{exc.category} (code={exc.code} subcode={exc.subcode})"
        log.warning("subscription of channel %s: %s", channel["_id"], error)
        state = {"state": UNKNOWN, "fields": None, "missing": None, "checked_at": utcnow(), "error": error}
        await self.store.channels.set_fields(channel["_id"], {"subscription": state})
        return state

    async def subscription_of(self, channel_id: str, *, subscribe: bool = False) -> dict[str, Any]:
        """The admin API's and the CLI's view (subscribing first when asked)."""
        channel = await self.channel(channel_id)
        state = await (self.subscribe(channel) if subscribe else self.subscription(channel))
        return {"channel_id": str(channel["_id"]), "subscription": shown_subscription(state)}

    # -- history ---------------------------------------------------------------------------

    async def start_history(self, channel_id: str, payload: Any) -> tuple[int, dict[str, Any]]:
        """Queue the channel's history import (202); one that is running is shown as it is."""
        data = load(HISTORY_INPUT, payload if payload is not None else {})
        channel = await self.channel(channel_id)
        run = await self.queue_backfill(channel, parse_iso(data["since"]) if data.get("since") else None)
        self.wake["history"]()
        return 202, {"history_import": progress_of(run)}

    async def queue_backfill(self, channel: dict[str, Any], since: dt.datetime | None) -> dict[str, Any]:
        """Queue (or resume, or start over once finished) the channel's history import."""
        if not channel.get("access_token") or channel.get("needs_reauth"):
            raise ApiError(409, "needs_reauth", "The channel has no access token Meta accepts: reconnect it first.")
        run, _ = await self.store.history_runs.queue(
            runs_model.backfill_id(channel["_id"]), channel["_id"], runs_model.BACKFILL, since, restart=True
        )
        return run

    async def history_of(self, channel_id: str) -> dict[str, Any]:
        """The channel's history import and repairs, newest first."""
        channel = await self.channel(channel_id)
        runs = await self.store.history_runs.of_channel(channel["_id"])
        runs.sort(key=lambda r: r.get("queued_at") or utcnow(), reverse=True)
        return {"channel_id": str(channel["_id"]), "runs": [progress_of(r) for r in runs]}

    # -- helpers -------------------------------------------------------------------------

    async def channel(self, channel_id: str) -> dict[str, Any]:
        """A channel by id, or 404."""
        oid = as_object_id(channel_id)
        channel = None if oid is None else await self.store.channels.get(oid)
        if channel is None:
            raise not_found("channel")
        return channel

    def _in_background(self, work: Awaitable[Any]) -> None:
        async def run() -> None:
            try:
                channel_state = await work
                log.info("background subscription: %s", channel_state.get("state"))
            except Exception:
                log.exception("background subscription failed")

        task = asyncio.get_running_loop().create_task(run())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def stop(self) -> None:
        """Wait (briefly) for background subscriptions."""
        if self._background:
            await asyncio.wait(list(self._background), timeout=5)

    async def start(self) -> None:
        """Nothing to start: work is started by requests."""


def shown_subscription(state: dict[str, Any]) -> dict[str, Any]:
    """A stored subscription state as the API shows it."""
    return {
        "state": state.get("state", UNKNOWN),
        "fields": state.get("fields"),
        "missing": state.get("missing"),
        "checked_at": iso(state.get("checked_at")),
        "error": state.get("error"),
    }
