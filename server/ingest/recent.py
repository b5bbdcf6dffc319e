"""The messages this process stored lately, so that their redeliveries cost no round trip.

Meta delivers a webhook at least once: a POST that timed out on its side, or that it simply
sends twice, comes back with a mid already stored. The store's unique index answers that
(the insert is refused, the holder is read, its events are offered again and skipped by
their once key): three round trips, more than a new message costs. Most redeliveries reach
the process that stored the first copy within minutes, and that process knows it finished
the message: stored, applied to its conversation, its events in the channel's log.

:class:`RecentlyStored` remembers exactly that — only messages whose events were *settled*
(:meth:`server.inbox.events.EventSink.publish`), so a message whose events went to this
process's sockets only (Redis down) still gets the repair a redelivery brings. It forgets
after ``RECENT_TTL_SECS`` and beyond ``RECENT_MAX`` entries (least recently used first); a
redelivery it does not know takes the store's path, which stays the source of truth.
"""

from __future__ import annotations

from typing import Any

from models.cache import TtlLru

# About 3 MB at most; a busy process's last few minutes of messages.
RECENT_MAX = 10_000
# Meta retries within minutes; later redeliveries are rare enough to ask the store.
RECENT_TTL_SECS = 600.0


class RecentlyStored:
    """(channel, mid) → (conversation id, message id) of messages this process finished."""

    def __init__(self, maxsize: int = RECENT_MAX, ttl_secs: float = RECENT_TTL_SECS) -> None:
        self._entries: TtlLru[tuple[Any, str], tuple[Any, Any]] = TtlLru(maxsize, ttl_secs)

    def remember(self, channel_id: Any, mid: str, conversation_id: Any, message_id: Any) -> None:
        """``mid`` is stored, applied and its events settled."""
        self._entries.put((channel_id, mid), (conversation_id, message_id))

    def lookup(self, channel_id: Any, mid: str) -> tuple[Any, Any] | None:
        """(conversation id, message id) when this process finished ``mid`` lately, else None."""
        return self._entries.lookup((channel_id, mid))[1]

    def clear(self) -> None:
        """Forget everything: the next redelivery of any message takes the store's path, as on
        a process that did not store it."""
        self._entries.clear()
