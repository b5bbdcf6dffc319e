"""A channel's token refused by Meta: one place decides what follows.

Owns :class:`ChannelHealth`. Every caller of the Graph API (profile look-ups, attachment
links, sends, token refreshes, history import) reports a refused token (code 190, or a
refresh that failed for good) here: the channel is marked ``needs_reauth`` once — a guarded
update, so of many callers seeing the same 190 at once one announces it — and
``channel_updated`` goes to the owner's sockets, where the inbox shows "reconnect this
account". Reconnecting clears the flag (:mod:`server.accounts.service`).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from bson import ObjectId

from models.store import Store
from server.inbox import events as ev
from server.ops.metrics import Metrics

log = logging.getLogger("igsync.accounts")


class ChannelHealth:
    def __init__(self, store: Store, publish: Callable[[list[ev.Event]], Awaitable[None]], metrics: Metrics) -> None:
        self.store = store
        self.publish = publish
        self.metrics = metrics

    async def token_rejected(self, channel_id: ObjectId, *, by: str) -> None:
        """Meta refused the channel's token while ``by`` (profiles, links, send, refresh…) called."""
        channel = await self.store.channels.mark_needs_reauth(channel_id)
        if channel is None:
            return  # marked already (by another caller) or gone: announced once
        self.metrics.token_rejections.labels(by=by).inc()
        log.warning("channel %s needs re-authorisation: Instagram refused its access token (%s)", channel_id, by)
        await self.publish([ev.channel_updated(channel)])
