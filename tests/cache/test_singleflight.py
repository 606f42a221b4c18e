from __future__ import annotations

import asyncio

import pytest

from gateway.cache.memory import MemoryCache
from gateway.cache.singleflight import Lookup, SingleFlight, Uncached


class CountingCompute:
    """A computation that takes `delay_s`, counts its calls, and may fail."""

    def __init__(self, value: bytes = b"decision", delay_s: float = 0.05) -> None:
        self.value = value
        self.delay_s = delay_s
        self.calls = 0
        self.fail_with: Exception | None = None

    async def __call__(self) -> bytes:
        self.calls += 1
        await asyncio.sleep(self.delay_s)
        if self.fail_with is not None:
            raise self.fail_with
        return self.value


def test_twenty_concurrent_identical_misses_compute_once() -> None:
    async def scenario() -> list[Lookup]:
        flights = SingleFlight(MemoryCache(100), ttl_s=60)
        compute = CountingCompute()
        results = await asyncio.gather(*(flights.get_or_compute("p:k", compute) for _ in range(20)))
        assert compute.calls == 1
        assert flights.in_flight == 0
        return results

    results = asyncio.run(scenario())
    assert {result.value for result in results} == {b"decision"}
    assert not any(result.cached for result in results)


def test_hit_after_miss_does_not_compute_again() -> None:
    async def scenario() -> None:
        flights = SingleFlight(MemoryCache(100), ttl_s=60)
        compute = CountingCompute()
        first = await flights.get_or_compute("p:k", compute)
        second = await flights.get_or_compute("p:k", compute)
        assert first == Lookup(b"decision", cached=False)
        assert second == Lookup(b"decision", cached=True)
        assert compute.calls == 1

    asyncio.run(scenario())


def test_different_keys_compute_separately() -> None:
    async def scenario() -> None:
        flights = SingleFlight(MemoryCache(100), ttl_s=60)
        compute = CountingCompute()
        await asyncio.gather(*(flights.get_or_compute(f"p:{i}", compute) for i in range(5)))
        assert compute.calls == 5

    asyncio.run(scenario())


def test_leader_exception_reaches_its_flight_only_and_next_caller_retries() -> None:
    async def scenario() -> None:
        flights = SingleFlight(MemoryCache(100), ttl_s=60)
        compute = CountingCompute()
        compute.fail_with = RuntimeError("engine down")
        results = await asyncio.gather(
            *(flights.get_or_compute("p:k", compute) for _ in range(5)), return_exceptions=True
        )
        assert compute.calls == 1
        assert all(isinstance(result, RuntimeError) for result in results)
        assert flights.in_flight == 0
        compute.fail_with = None
        assert await flights.get_or_compute("p:k", compute) == Lookup(b"decision", False)
        assert compute.calls == 2

    asyncio.run(scenario())


def test_cancelled_caller_does_not_cancel_the_others() -> None:
    async def scenario() -> None:
        flights = SingleFlight(MemoryCache(100), ttl_s=60)
        compute = CountingCompute(delay_s=0.1)
        leader = asyncio.create_task(flights.get_or_compute("p:k", compute))
        follower = asyncio.create_task(flights.get_or_compute("p:k", compute))
        await asyncio.sleep(0.02)
        leader.cancel()
        assert (await follower).value == b"decision"
        with pytest.raises(asyncio.CancelledError):
            await leader
        assert compute.calls == 1

    asyncio.run(scenario())


def test_uncached_value_is_delivered_but_not_stored() -> None:
    async def scenario() -> None:
        cache = MemoryCache(100)
        flights = SingleFlight(cache, ttl_s=60)

        async def fallback() -> Uncached:
            return Uncached(b"fallback")

        assert (await flights.get_or_compute("p:k", fallback)).value == b"fallback"
        assert await cache.get("p:k") is None

    asyncio.run(scenario())
