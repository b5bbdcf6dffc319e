"""The one in-process cache of igsync: bounded, least recently used out first, entries expire.

Every hot path that would otherwise read the same document again and again (a token's
owner, a channel by account, a (channel, customer) thread, a channel's trigger settings, the
customers whose profile was considered lately) keeps its copy here, so each has the same
two rules: at most ``maxsize`` entries (a flood of distinct keys evicts the oldest instead of
growing the process), and an entry older than ``ttl_secs`` is read again (a change made by
another process takes effect within that time). A cached ``None`` is a hit: "no such
channel" is worth remembering too.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class TtlLru(Generic[K, V]):
    """A bounded LRU map whose entries expire ``ttl_secs`` after they were put."""

    def __init__(
        self, maxsize: int, ttl_secs: float = math.inf, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if maxsize < 1:
            raise ValueError("maxsize must be at least 1")
        self.maxsize = maxsize
        self.ttl_secs = ttl_secs
        self.clock = clock
        self._entries: OrderedDict[K, tuple[float, V]] = OrderedDict()

    @property
    def enabled(self) -> bool:
        """False when ``ttl_secs`` is 0 or less: nothing is kept (a setting that turns caching off)."""
        return self.ttl_secs > 0

    def lookup(self, key: K) -> tuple[bool, V | None]:
        """``(True, value)`` for a live entry (now the most recently used), else ``(False, None)``."""
        entry = self._entries.get(key)
        if entry is None:
            return False, None
        if entry[0] <= self.clock():
            del self._entries[key]
            return False, None
        self._entries.move_to_end(key)
        return True, entry[1]

    def put(self, key: K, value: V) -> None:
        """Remember ``value`` for ``ttl_secs``, evicting the least recently used past ``maxsize``."""
        if not self.enabled:
            return
        self._entries[key] = (self.clock() + self.ttl_secs, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self.maxsize:
            self._entries.popitem(last=False)

    def discard(self, key: K) -> None:
        """Forget one entry (the caller knows it changed)."""
        self._entries.pop(key, None)

    def clear(self) -> None:
        """Forget everything."""
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)
