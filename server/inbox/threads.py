"""Finding the channel of a webhook and the customer + conversation of an item.

Owns two small per-process caches and the rule that decides them:

* :class:`ChannelCache` — ``entry.id`` → connected channel, trusted for
  ``channel_cache_secs`` (a disconnect made in another process takes effect within that
  time; in this process at once, :meth:`ChannelCache.invalidate`). Unknown ids are cached
  too, so a flood for an unconnected account costs no queries.
* :class:`ThreadResolver` — (channel, customer's Instagram id) → (customer, conversation).
  Both are created by atomic upserts on unique indexes; once they exist they are never
  deleted or re-keyed, so the mapping is cached without expiry (bounded LRU).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bson import ObjectId

from models.cache import TtlLru
from models.store import Store

# Connected channels one process keeps at once.
CHANNELS_CACHED = 10_000


class ChannelCache:
    def __init__(self, store: Store, *, ttl_secs: float) -> None:
        self.store = store
        self.ttl_secs = ttl_secs
        # account id → connected channel (None: none), so a webhook burst reads it once.
        self._entries: TtlLru[str, dict[str, Any] | None] = TtlLru(CHANNELS_CACHED, ttl_secs)

    async def lookup(self, account_id: str) -> dict[str, Any] | None:
        """The connected channel of an Instagram account id, or None (cached)."""
        hit, channel = self._entries.lookup(account_id)
        if hit:
            return channel
        channel = await self.store.channels.find_connected_by_account(account_id)
        self._entries.put(account_id, channel)
        return channel

    def invalidate(self) -> None:
        """Forget every cached channel (after a connect or disconnect)."""
        self._entries.clear()


def channel_account_ids(channel: dict[str, Any]) -> set[str]:
    """The ids Instagram may use for the business itself in ``sender``/``recipient``."""
    return {str(v) for v in (channel.get("page_id"), channel.get("instagram_user_id")) if v}


@dataclass(frozen=True)
class Thread:
    customer_id: ObjectId
    conversation_id: ObjectId
    customer_created: bool = False
    conversation_created: bool = False
    customer: dict[str, Any] | None = None  # set only when it was just read or created


class ThreadResolver:
    def __init__(self, store: Store, *, max_cached: int = 100_000) -> None:
        self.store = store
        self.max_cached = max_cached
        # A (channel, customer) pair's conversation never changes once created: no expiry.
        self._cache: TtlLru[tuple[ObjectId, str], Thread] = TtlLru(max_cached)

    async def resolve(self, channel_id: ObjectId, customer_instagram_id: str) -> Thread:
        """The customer and conversation of (channel, Instagram id), created once if missing."""
        key = (channel_id, customer_instagram_id)
        hit, cached = self._cache.lookup(key)
        if hit and cached is not None:
            return cached
        conversation = await self.store.conversations.find_by_customer(channel_id, customer_instagram_id)
        if conversation is not None:
            thread = Thread(conversation["customer_id"], conversation["_id"])
        else:
            customer, customer_created = await self.store.customers.get_or_create(channel_id, customer_instagram_id)
            conversation, conversation_created = await self.store.conversations.get_or_create(channel_id, customer)
            thread = Thread(customer["_id"], conversation["_id"], customer_created, conversation_created, customer)
        self._remember(key, Thread(thread.customer_id, thread.conversation_id))
        return thread

    def _remember(self, key: tuple[ObjectId, str], thread: Thread) -> None:
        self._cache.put(key, thread)
