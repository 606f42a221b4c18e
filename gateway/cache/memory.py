"""The in-process cache: a bounded LRU whose entries expire; the default when no URL is set."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

from gateway.cache.base import CacheStatus
from gateway.cache.key import policy_of

_OK = CacheStatus("ok")


class MemoryCache:
    """At most `max_entries` decisions, least recently used evicted first, each with a TTL.

    `clock` is the monotonic time in seconds (a fake one in tests). Nothing here awaits, so the
    asyncio event loop makes every operation atomic.
    """

    def __init__(self, max_entries: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self._max_entries = max_entries
        self._clock = clock
        self._entries: OrderedDict[str, tuple[float, bytes]] = OrderedDict()

    @property
    def status(self) -> CacheStatus:
        return _OK

    def __len__(self) -> int:
        return len(self._entries)

    async def get(self, key: str) -> bytes | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires_at, value = entry
        if self._clock() >= expires_at:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return value

    async def set(self, key: str, value: bytes, ttl_s: int) -> None:
        if ttl_s <= 0:
            raise ValueError("ttl_s must be positive")
        self._entries[key] = (self._clock() + ttl_s, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)

    async def clear(self, policy: str | None = None) -> int:
        if policy is None:
            removed = len(self._entries)
            self._entries.clear()
            return removed
        doomed = [key for key in self._entries if policy_of(key) == policy]
        for key in doomed:
            del self._entries[key]
        return len(doomed)

    async def close(self) -> None:
        self._entries.clear()
