"""models/cache.py: the bounded, expiring cache every hot path shares."""

from __future__ import annotations

import pytest

from models.cache import TtlLru


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_cached_none_is_a_hit_and_expires_after_ttl() -> None:
    clock = Clock()
    cache: TtlLru[str, str | None] = TtlLru(10, 30.0, clock=clock)
    assert cache.lookup("a") == (False, None)
    cache.put("a", None)
    assert cache.lookup("a") == (True, None)
    clock.now += 29.9
    assert cache.lookup("a") == (True, None)
    clock.now += 0.1
    assert cache.lookup("a") == (False, None)
    assert len(cache) == 0  # the expired entry is gone, not only hidden


def test_the_least_recently_used_entry_leaves_first() -> None:
    cache: TtlLru[int, int] = TtlLru(3)
    for key in (1, 2, 3):
        cache.put(key, key * 10)
    assert cache.lookup(1) == (True, 10)  # 1 is now the most recently used
    cache.put(4, 40)
    assert len(cache) == 3
    assert cache.lookup(2) == (False, None)
    assert [cache.lookup(k)[0] for k in (1, 3, 4)] == [True, True, True]


def test_a_ttl_of_zero_keeps_nothing() -> None:
    cache: TtlLru[str, int] = TtlLru(10, 0)
    cache.put("a", 1)
    assert not cache.enabled
    assert cache.lookup("a") == (False, None)


def test_put_again_refreshes_the_expiry_and_discard_forgets() -> None:
    clock = Clock()
    cache: TtlLru[str, int] = TtlLru(10, 10.0, clock=clock)
    cache.put("a", 1)
    clock.now += 8
    cache.put("a", 2)
    clock.now += 8
    assert cache.lookup("a") == (True, 2)
    cache.discard("a")
    cache.discard("missing")
    assert cache.lookup("a") == (False, None)
    cache.put("b", 3)
    cache.clear()
    assert len(cache) == 0


def test_maxsize_must_be_positive() -> None:
    with pytest.raises(ValueError):
        TtlLru(0)
