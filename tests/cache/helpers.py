"""Small builders shared by the Redis tests."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from gateway.cache.redis import RedisCache
from gateway.cache.singleflight import SingleFlight
from gateway.config import CacheSettings

TIMEOUT_S = 0.1  # twice the shipped default, for busy CI machines; the bounds scale with it
COOLDOWN_S = 0.2
PREFIX = "test:"


def redis_cache(url: str, *, prefix: str = PREFIX, timeout_s: float = TIMEOUT_S) -> RedisCache:
    settings = CacheSettings(
        timeout_s=timeout_s, key_prefix=prefix, breaker_failures=5, breaker_cooldown_s=COOLDOWN_S
    )
    return RedisCache.from_url(url, settings)


def flights_over(cache: RedisCache, *, lock_ttl_ms: int = 2000) -> SingleFlight:
    return SingleFlight(cache, ttl_s=60, lock=cache, lock_ttl_ms=lock_ttl_ms, poll_interval_s=0.02)


class Decisions:
    """A fake decision maker: the value names the key; counts calls per key."""

    def __init__(self, delay_s: float = 0.02) -> None:
        self.delay_s = delay_s
        self.calls: dict[str, int] = {}

    def for_key(self, key: str) -> Callable[[], Awaitable[bytes]]:
        async def compute() -> bytes:
            self.calls[key] = self.calls.get(key, 0) + 1
            await asyncio.sleep(self.delay_s)
            return expected(key)

        return compute

    @property
    def total(self) -> int:
        return sum(self.calls.values())


def expected(key: str) -> bytes:
    return f"decision for {key}".encode()
