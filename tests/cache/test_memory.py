from __future__ import annotations

import asyncio

from gateway.cache.memory import MemoryCache


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_hit_after_set_and_miss_before() -> None:
    async def scenario() -> None:
        cache = MemoryCache(10)
        assert await cache.get("p:a") is None
        await cache.set("p:a", b"decision", ttl_s=60)
        assert await cache.get("p:a") == b"decision"

    asyncio.run(scenario())


def test_least_recently_used_entry_is_evicted_at_the_bound() -> None:
    async def scenario() -> None:
        cache = MemoryCache(2)
        await cache.set("p:a", b"a", ttl_s=60)
        await cache.set("p:b", b"b", ttl_s=60)
        assert await cache.get("p:a") == b"a"  # a is now more recent than b
        await cache.set("p:c", b"c", ttl_s=60)
        assert len(cache) == 2
        assert await cache.get("p:b") is None
        assert await cache.get("p:a") == b"a"
        assert await cache.get("p:c") == b"c"

    asyncio.run(scenario())


def test_entry_expires_after_its_ttl() -> None:
    async def scenario() -> None:
        clock = FakeClock()
        cache = MemoryCache(10, clock=clock)
        await cache.set("p:a", b"a", ttl_s=30)
        clock.now += 29.9
        assert await cache.get("p:a") == b"a"
        clock.now += 0.1
        assert await cache.get("p:a") is None
        assert len(cache) == 0

    asyncio.run(scenario())


def test_overwrite_refreshes_value_and_ttl() -> None:
    async def scenario() -> None:
        clock = FakeClock()
        cache = MemoryCache(10, clock=clock)
        await cache.set("p:a", b"old", ttl_s=10)
        clock.now += 8
        await cache.set("p:a", b"new", ttl_s=10)
        clock.now += 8
        assert await cache.get("p:a") == b"new"

    asyncio.run(scenario())


def test_clear_by_policy_removes_only_that_policy_and_counts() -> None:
    async def scenario() -> None:
        cache = MemoryCache(10)
        for key in ("cascade:1", "cascade:2", "guard:1", "cascade:x:1"):
            await cache.set(key, b"v", ttl_s=60)
        assert await cache.clear("cascade") == 2
        assert await cache.get("guard:1") == b"v"
        assert await cache.get("cascade:x:1") == b"v"
        assert await cache.clear() == 2
        assert len(cache) == 0

    asyncio.run(scenario())


def test_memory_cache_is_always_ok() -> None:
    assert MemoryCache(1).status.ok
