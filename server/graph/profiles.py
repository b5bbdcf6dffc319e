"""Customer profiles: a best-effort Graph API look-up when a customer writes for the first time,
and again when they write after ``profile_refresh_days`` (names and pictures change).

Owns the :class:`ProfileService` — a ``new_customer_hook`` of the ingest pipeline and a
background service of the core. The webhook never waits for it: the hook only schedules
a task; at most ``profile_concurrency`` look-ups run at once per process, and at most
``MAX_PENDING`` wait (beyond that a look-up is dropped and logged — the customer keeps
its id, nothing else is lost).

What each answer does (Meta's codes, handled as Chatwoot learned to):

* a profile → names, username, picture stored, ``enhanced_data_fetched: true``; the picture
  is then copied into the media store (Instagram's link expires) as ``profile_pic_file``;
* 190 (token expired or revoked) → the channel is marked ``needs_reauth`` and no more
  look-ups are made for it until it is reconnected with a new token; the customer gets
  the placeholder name;
* 230 (no consent), 9010 (no such user), 100 (not reachable) → placeholder name
  ``Unknown (IG: <id>)``, never retried;
* timeouts, 5xx, rate limits → retried ``profile_max_attempts`` times with a doubling
  wait, then the placeholder;
* a channel connected without an access token → no call, nothing visible changes;

and each outcome is stored on the customer (``profile_status``) and reaches the inbox as
``conversation_updated`` (the conversation embeds the customer).

A returning customer (:meth:`ProfileService.returning_customer`, called for every message a
known customer sends) costs a dictionary look-up: each process remembers whom it considered
in the last ``profile_refresh_days``. Past that, a background task *claims* the refresh in
MongoDB (one atomic update: only customers whose last look-up was ``fetched``, ``error`` or
never finished, longer ago than that; of several processes one wins) and looks them up
again. ``unavailable`` (Meta said no) and ``no_token`` / ``reauth_required`` customers are
not asked again. A refreshed picture replaces the old copy, which is deleted.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from bson import ObjectId
from pymongo.errors import PyMongoError

from models.cache import TtlLru
from models.media_files import media_file_id, media_url
from models.store import Store
from models.timeutil import utcnow
from server.graph import client as graph
from server.graph.health import ChannelHealth
from server.inbox import events as ev
from server.ops.metrics import Metrics

log = logging.getLogger("igsync.profiles")

MAX_PENDING = 1000
# Customers a process remembers having considered for a refresh (least recent forgotten first).
MAX_CONSIDERED = 100_000

# customers.profile_status values (also the outcome label of igsync_profile_lookups_total).
FETCHED = "fetched"
REAUTH_REQUIRED = "reauth_required"
UNAVAILABLE = "unavailable"
ERROR = "error"
NO_TOKEN = "no_token"
DROPPED = "dropped"
# Whose profile a returning customer's message may refresh (None: no look-up ever finished).
REFRESHABLE: tuple[str | None, ...] = (FETCHED, ERROR, None)


def placeholder_name(instagram_id: str) -> str:
    """The name shown for a customer whose profile could not be read."""
    return f"Unknown (IG: {instagram_id})"


class PictureStore(Protocol):
    """Where profile pictures are copied (the media service)."""

    async def copy_picture(self, channel_id: ObjectId, customer_id: ObjectId, url: str) -> ObjectId | None:
        """Copy a profile picture into the media store; the file id, or None."""
        ...


class ProfileService:
    def __init__(
        self,
        store: Store,
        graph_api: graph.GraphApiClient,
        publish: Callable[[list[ev.Event]], Awaitable[None]],
        metrics: Metrics,
        *,
        concurrency: int,
        max_attempts: int,
        retry_base_secs: float,
        refresh_after_secs: float = 0.0,
        health: ChannelHealth,
        pictures: PictureStore | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.graph = graph_api
        self.pictures = pictures
        self.health = health
        self.publish = publish
        self.metrics = metrics
        self.max_attempts = max_attempts
        self.retry_base_secs = retry_base_secs
        self.refresh_after_secs = refresh_after_secs
        self.clock = clock  # of the in-process memory only; the claim in MongoDB uses utcnow()
        # Customers considered for a refresh within refresh_after_secs: not considered again.
        self._considered: TtlLru[ObjectId, bool] = TtlLru(
            MAX_CONSIDERED, refresh_after_secs, clock=lambda: self.clock()
        )
        self._slots = asyncio.Semaphore(concurrency)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stopping = False

    # -- NewCustomerHook -----------------------------------------------------------------

    def new_customer(self, channel: dict[str, Any], customer: dict[str, Any]) -> None:
        """Schedule the look-up and return at once (the webhook is waiting)."""
        self._consider(customer["_id"])
        self._schedule(lambda: self.refresh(channel["_id"], customer), customer["_id"])

    def returning_customer(self, channel: dict[str, Any], customer_id: ObjectId) -> None:
        """A known customer wrote: look them up again if the last look-up is old (in the
        background; here only a dictionary look-up, most of the time)."""
        if self.refresh_after_secs <= 0 or not self._consider(customer_id):
            return
        self._schedule(lambda: self._refresh_if_stale(channel["_id"], customer_id), customer_id)

    def look_up_again(self, channel_id: ObjectId, customers: list[dict[str, Any]]) -> None:
        """Customers whose look-up waited for the channel's re-authorisation: look them up now
        (in the background, within the usual concurrency)."""
        for customer in customers:
            self._schedule(lambda customer=customer: self.refresh(channel_id, customer), customer["_id"])

    def _consider(self, customer_id: ObjectId) -> bool:
        """Remember the customer as considered now; False if they were, recently."""
        if self.refresh_after_secs <= 0:
            return True  # nothing to remember: returning customers are never looked up again
        seen, _ = self._considered.lookup(customer_id)
        if seen:
            return False
        self._considered.put(customer_id, True)
        return True

    def _schedule(self, work: Callable[[], Awaitable[Any]], customer_id: ObjectId) -> None:
        if self._stopping:
            return
        if len(self._tasks) >= MAX_PENDING:
            self.metrics.profile_lookups.labels(outcome=DROPPED).inc()
            log.warning("profile look-up dropped: %d already pending (customer=%s)", len(self._tasks), customer_id)
            return
        task = asyncio.get_running_loop().create_task(self._run(work, customer_id))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _refresh_if_stale(self, channel_id: ObjectId, customer_id: ObjectId) -> str | None:
        checked_before = utcnow() - dt.timedelta(seconds=self.refresh_after_secs)
        if not await self.store.customers.claim_profile_refresh(
            customer_id, checked_before=checked_before, statuses=REFRESHABLE, channel_id=channel_id
        ):
            return None
        customer = await self.store.customers.get(customer_id, channel_id)
        return None if customer is None else await self.refresh(channel_id, customer)

    async def _run(self, work: Callable[[], Awaitable[Any]], customer_id: ObjectId) -> None:
        try:
            async with self._slots:
                await work()
        except asyncio.CancelledError:
            raise
        except PyMongoError as exc:
            log.warning("profile look-up not stored: MongoDB failed (%s) customer=%s", type(exc).__name__, customer_id)
        except Exception:
            log.exception("profile look-up failed unexpectedly customer=%s", customer_id)

    # -- the work ------------------------------------------------------------------------

    async def refresh(self, channel_id: ObjectId, customer: dict[str, Any]) -> str:
        """Look the customer (as just created) up and store the outcome; returns the
        ``profile_status``."""
        # A fresh read, not the webhook's cached channel: a 190 seen a moment ago by another
        # look-up must stop this one from asking again.
        channel = await self.store.channels.get(channel_id)
        if channel is None:
            return ERROR
        customer_id = customer["_id"]
        account = graph.GraphAccount.of(channel)
        if channel.get("needs_reauth"):
            status, profile = REAUTH_REQUIRED, None
        elif account is None:
            status, profile = NO_TOKEN, None
        else:
            status, profile = await self._lookup(channel, customer, account)
        self.metrics.profile_lookups.labels(outcome=status).inc()
        if status == NO_TOKEN:
            # Enrichment is off for a channel connected without a token: nothing visible
            # changes (no placeholder, no event); the status says why there is no profile.
            await self.store.customers.update_profile(
                customer["_id"], {"profile_status": status}, channel_id=customer["channel_id"]
            )
        else:
            await self._store(channel, customer, status, profile)
        log.info("customer profile: %s customer=%s channel=%s", status, customer_id, channel_id)
        return status

    async def _lookup(
        self, channel: dict[str, Any], customer: dict[str, Any], account: graph.GraphAccount
    ) -> tuple[str, graph.Profile | None]:
        for attempt in range(1, self.max_attempts + 1):
            try:
                return FETCHED, await self.graph.user_profile(account, customer["instagram_id"])
            except graph.GraphApiError as exc:
                # The error carries codes and Meta's message with the token masked — never the URL.
                log.info(
                    "graph api profile look-up: %s code=%s subcode=%s http=%s attempt=%d customer=%s",
                    exc.category,
                    exc.code,
                    exc.subcode,
                    exc.http_status,
                    attempt,
                    customer["_id"],
                )
                if exc.category == graph.TOKEN_EXPIRED:
                    if await self.health.token_rejected(channel, by="profiles"):
                        return REAUTH_REQUIRED, None
                    # Reconnected while this look-up used the old token: the next try uses the new.
                    channel = await self.store.channels.get(channel["_id"]) or channel
                    account = graph.GraphAccount.of(channel) or account
                    if attempt == self.max_attempts:
                        return ERROR, None
                elif exc.category == graph.UNAVAILABLE:
                    return UNAVAILABLE, None
                elif exc.category != graph.TRANSIENT or attempt == self.max_attempts:
                    return ERROR, None
            await asyncio.sleep(self.retry_base_secs * 2 ** (attempt - 1))
        return ERROR, None

    async def _store(
        self, channel: dict[str, Any], customer: dict[str, Any], status: str, profile: graph.Profile | None
    ) -> None:
        fields: dict[str, Any] = {"profile_status": status, "profile_checked_at": utcnow()}
        if profile is not None:
            first, last = profile.names()
            fields.update(
                first_name=first,
                last_name=last,
                username=profile.username,
                profile_pic=profile.profile_pic,
                enhanced_data_fetched=True,
            )
            if not profile.profile_pic:
                fields["profile_pic_file"] = None  # the customer took their picture down
        elif not customer.get("enhanced_data_fetched"):
            fields.update(first_name=placeholder_name(customer["instagram_id"]), enhanced_data_fetched=False)
        waiting = channel["_id"] if status == REAUTH_REQUIRED else None
        updated = await self.store.customers.update_profile(
            customer["_id"], fields, awaiting_reauth=waiting, channel_id=customer["channel_id"]
        )
        if updated is None:
            return
        await self._announce(channel["_id"], updated)
        previous_copy = media_file_id(customer.get("profile_pic_file"))
        if profile is not None and profile.profile_pic and self.pictures is not None:
            if await self._copy_picture(channel["_id"], updated["_id"], profile.profile_pic):
                await self._forget_copy(previous_copy)
        elif profile is not None and not profile.profile_pic:
            await self._forget_copy(previous_copy)

    async def _copy_picture(self, channel_id: ObjectId, customer_id: ObjectId, url: str) -> bool:
        """Keep the picture past the expiry of Instagram's link: our copy goes beside it as
        ``profile_pic_file`` and the inbox hears of it like of the profile itself. Whether
        the customer now shows this copy."""
        assert self.pictures is not None
        file_id = await self.pictures.copy_picture(channel_id, customer_id, url)
        if file_id is None:
            return False
        updated = await self.store.customers.set_picture_copy(customer_id, url, media_url(file_id), channel_id)
        if updated is None:
            # The picture changed while we copied it: this copy shows nobody.
            await self.store.media_files.delete(file_id)
            return False
        await self._announce(channel_id, updated)
        return True

    async def _forget_copy(self, file_id: ObjectId | None) -> None:
        """A picture copy no customer shows any more (replaced by a refresh, or taken down)."""
        if file_id is not None:
            await self.store.media_files.delete(file_id)

    async def _announce(self, channel_id: ObjectId, customer: dict[str, Any]) -> None:
        conversation = await self.store.conversations.refresh_customer(channel_id, customer)
        if conversation is not None:
            await self.publish([ev.conversation_updated(conversation)])

    # -- service ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Allow look-ups (they run as tasks; nothing to start)."""
        self._stopping = False

    async def stop(self) -> None:
        """Cancel what is still pending: a look-up is best-effort, the customer stays usable."""
        self._stopping = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        self.graph.close()

    async def idle(self) -> None:
        """Wait for the look-ups scheduled so far (tests, benchmarks)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
