"""Fresh links for expired attachment URLs, from the Graph API.

The links in a webhook are signed CDN URLs that expire. The media worker downloads within
milliseconds of the webhook, but a job can still meet an expired link: it waited out a
CDN outage with backoff, the workers were down for a day, or an operator re-queued an old
failure. Instagram answers ``GET /{message-id}?fields=attachments`` with newly signed
links, so the worker asks once per job before giving up (:class:`LinkRefresher`).

What each answer does (the same codes the profile look-up acts on):

* a link for the attachment → the job downloads from it (and keeps it, so a retry after a
  crash does too); if that link fails as well, the job fails — no second refresh;
* 190 (token expired) → the channel is marked ``needs_reauth``; the job fails as expired;
* 100/230/9010 (message gone or not reachable), no link in the answer, a channel without a
  token or waiting for re-authorisation → the job fails as expired, as before;
* timeouts, 5xx, rate limits → the job is retried with its usual backoff (and asks again).

A story reply's story is not an attachment of the message: there is nothing to ask for.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from models.store import Store
from server.graph import client as graph
from server.graph.health import ChannelHealth
from server.ops.metrics import Metrics

log = logging.getLogger("igsync.media")

# Outcomes: the label of igsync_media_link_refreshes_total (server.metrics.MEDIA_LINK_OUTCOMES).
REFRESHED = "refreshed"
NO_LINK = "no_link"
REAUTH_REQUIRED = "reauth_required"
NO_TOKEN = "no_token"
TRANSIENT = "transient"
ERROR = "error"

ATTACHMENT_PREFIX = "attachments."


@dataclass(frozen=True)
class Refresh:
    outcome: str
    url: str | None = None


def pick_url(urls: list[str | None], key: str) -> str | None:
    """The fresh link for the attachment at ``key`` (``attachments.N``): the N-th of the
    Graph API's answer, or its only one when it lists a single attachment."""
    if not key.startswith(ATTACHMENT_PREFIX):
        return None
    index = int(key.removeprefix(ATTACHMENT_PREFIX))
    if len(urls) == 1:
        return urls[0]
    return urls[index] if index < len(urls) else None


class LinkRefresher:
    def __init__(self, store: Store, graph_api: graph.GraphApiClient, metrics: Metrics, health: ChannelHealth) -> None:
        self.store = store
        self.graph = graph_api
        self.metrics = metrics
        self.health = health

    def close(self) -> None:
        """Close the Graph API client."""
        self.graph.close()

    def can_refresh(self, job: dict[str, Any]) -> bool:
        """Whether the job is an attachment whose link was not refreshed yet."""
        return str(job.get("key", "")).startswith(ATTACHMENT_PREFIX) and not job.get("url_refreshed_at")

    async def fresh_url(self, job: dict[str, Any]) -> Refresh:
        """A fresh link for an expired attachment, asked of the Graph API; None when there is none."""
        refresh = await self._ask(job)
        self.metrics.media_link_refreshes.labels(outcome=refresh.outcome).inc()
        log.info("media job %s: link refresh %s message=%s", job["_id"], refresh.outcome, job["message_id"])
        return refresh

    async def _ask(self, job: dict[str, Any]) -> Refresh:
        # A fresh read of the channel, not a cached one: a 190 seen a moment ago by another
        # caller must stop this one from asking with the same dead token.
        channel = await self.store.channels.get(job["channel_id"])
        message = await self.store.messages.get(job["message_id"])
        if channel is None or message is None or not message.get("mid"):
            return Refresh(ERROR)
        account = graph.GraphAccount.of(channel)
        if channel.get("needs_reauth") or account is None:
            return Refresh(REAUTH_REQUIRED if channel.get("needs_reauth") else NO_TOKEN)
        try:
            urls = await self.graph.message_attachment_urls(account, message["mid"])
        except graph.GraphApiError as exc:
            # Codes and Meta's message with the token masked — never the URL.
            log.info(
                "graph api attachment links: %s code=%s subcode=%s http=%s message=%s",
                exc.category,
                exc.code,
                exc.subcode,
                exc.http_status,
                job["message_id"],
            )
            if exc.category == graph.TOKEN_EXPIRED and await self.health.token_rejected(channel, by="links"):
                return Refresh(REAUTH_REQUIRED)
            # (Refused after a reconnect that gave the channel a new token: try again with it.)
            if exc.category in (graph.TRANSIENT, graph.TOKEN_EXPIRED):
                return Refresh(TRANSIENT)
            return Refresh(NO_LINK if exc.category == graph.UNAVAILABLE else ERROR)
        url = pick_url(urls, job["key"])
        if url is None or url == job["url"]:
            return Refresh(NO_LINK)
        return Refresh(REFRESHED, url)
