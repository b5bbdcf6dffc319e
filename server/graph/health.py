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
from typing import Any

from models.store import Store
from server.inbox import events as ev
from server.ops.metrics import Metrics

log = logging.getLogger("igsync.accounts")


class ChannelHealth:
    def __init__(self, store: Store, publish: Callable[[list[ev.Event]], Awaitable[None]], metrics: Metrics) -> None:
        self.store = store
        self.publish = publish
        self.metrics = metrics

    async def token_rejected(self, channel: dict[str, Any], *, by: str) -> bool:
        """Meta refused ``channel``'s token (the token of this copy of the channel, the one the
        call used) while ``by`` (profiles, links, send, refresh…) called. False when the channel
        holds another token by now (reconnected meanwhile): the caller should try again rather
        than park its work until a reconnect that has already happened."""
        channel_id, refused_token = channel["_id"], channel.get("access_token")
        # Compare-and-set on the token: a call that was in flight with the old token when an
        # admin reconnected answers "refused" after the reconnect; that says nothing of the new one.
        marked = await self.store.channels.mark_needs_reauth(channel_id, refused_token)
        if marked is None:
            # Marked already (by another caller: announced once), or reconnected since, or gone.
            current = await self.store.channels.get(channel_id)
            return current is None or current.get("access_token") == refused_token
        self.metrics.token_rejections.labels(by=by).inc()
        log.warning("channel %s needs re-authorisation: Instagram refused its access token (%s)", channel_id, by)
        await self.publish([ev.channel_updated(marked)])
        return True
