"""Redis killed (SIGKILL) or frozen (SIGSTOP) under concurrent load: every call still answers,
within the time limit, and caching resumes by itself once Redis is back."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from gateway.cache.redis import RedisCache
from gateway.cache.singleflight import SingleFlight
from tests.cache.helpers import TIMEOUT_S, Decisions, expected, flights_over, redis_cache
from tests.servers import RedisServer

CALLS = 50
KEYS = 25  # two callers per key: single flight is in play too
COMPUTE_S = 0.02
# One flight makes at most four Redis calls (get, lock, set, unlock), each bounded by TIMEOUT_S.
# SLACK covers scheduling 50 tasks on a loaded CI machine, not Redis.
SLACK_S = 0.25
FLIGHT_BOUND_S = 4 * TIMEOUT_S + COMPUTE_S + SLACK_S
CALL_BOUND_S = TIMEOUT_S + SLACK_S


async def _load(flights: SingleFlight, decisions: Decisions, tag: str) -> list[tuple[float, bool]]:
    """CALLS concurrent look-ups; asserts each value; returns (seconds, cached) per call."""

    async def one(number: int) -> tuple[float, bool]:
        key = f"load:{tag}{number % KEYS}"
        start = time.monotonic()
        lookup = await flights.get_or_compute(key, decisions.for_key(key))
        assert lookup.value == expected(key)
        return time.monotonic() - start, lookup.cached

    return await asyncio.gather(*(one(number) for number in range(CALLS)))


async def _concurrent_gets(cache: RedisCache, tag: str) -> list[tuple[float, bytes | None]]:
    async def one(number: int) -> tuple[float, bytes | None]:
        start = time.monotonic()
        value = await cache.get(f"load:{tag}{number % KEYS}")
        return time.monotonic() - start, value

    return await asyncio.gather(*(one(number) for number in range(CALLS)))


async def _until_recovered(flights: SingleFlight, cache: RedisCache, tag: str) -> None:
    """Run load until Redis serves hits again (the breaker probes after its cool-down)."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        await _load(flights, Decisions(delay_s=0), tag)
        if cache.status.ok and all(cached for _, cached in await _load(flights, Decisions(), tag)):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"caching did not resume: {cache.status}")


def test_sigkill_under_load_costs_misses_only_and_recovers_after_restart(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.cache")

    async def scenario() -> None:
        cache = redis_cache(redis_server.url)
        flights = flights_over(cache)
        try:
            decisions = Decisions(delay_s=COMPUTE_S)
            warm = await _load(flights, decisions, "a")
            assert decisions.total == KEYS
            assert not any(cached for _, cached in warm)
            assert all(cached for _, cached in await _load(flights, decisions, "a"))

            # Killed while 50 calls are in flight, then 50 more against a dead server.
            during = asyncio.create_task(_load(flights, Decisions(delay_s=COMPUTE_S), "b"))
            await asyncio.sleep(0.005)
            redis_server.kill()
            timings = await during + await _load(flights, Decisions(delay_s=COMPUTE_S), "a")
            assert max(seconds for seconds, _ in timings) < FLIGHT_BOUND_S
            gets = await _concurrent_gets(cache, "a")
            assert all(value is None for _, value in gets)
            assert max(seconds for seconds, _ in gets) < CALL_BOUND_S
            assert cache.status.state == "degraded"

            redis_server.start()
            await _until_recovered(flights, cache, "c")
        finally:
            await cache.close()

    asyncio.run(scenario())
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    recoveries = [r for r in caplog.records if "resuming" in r.getMessage()]
    assert len(warnings) == 1
    assert len(recoveries) == 1


def test_sigstop_under_load_answers_within_time_limit_and_recovers_after_sigcont(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.cache")

    async def scenario() -> None:
        cache = redis_cache(redis_server.url)
        flights = flights_over(cache)
        try:
            await _load(flights, Decisions(delay_s=COMPUTE_S), "a")

            redis_server.freeze()
            # Concurrent reads go to Redis as one MGET: each round is one failed call, and the
            # breaker opens at its fifth.
            for _ in range(5):
                gets = await _concurrent_gets(cache, "a")
                assert all(value is None for _, value in gets)
                assert max(seconds for seconds, _ in gets) < CALL_BOUND_S
            assert cache.status.state == "degraded"
            assert f"no answer within {TIMEOUT_S:g} s" in cache.status.reason

            decisions = Decisions(delay_s=COMPUTE_S)
            timings = await _load(flights, decisions, "a")
            assert max(seconds for seconds, _ in timings) < FLIGHT_BOUND_S
            assert decisions.total == KEYS  # misses, computed once per key

            # Still frozen after the cool-down: one probe pays the time limit, nobody else.
            await asyncio.sleep(0.25)
            timings = await _load(flights, Decisions(delay_s=COMPUTE_S), "a")
            assert max(seconds for seconds, _ in timings) < FLIGHT_BOUND_S

            redis_server.thaw()
            await _until_recovered(flights, cache, "a")
            # Answers match their keys: no reply of a timed-out call reached another caller.
            for number in range(KEYS):
                assert await cache.get(f"load:a{number}") == expected(f"load:a{number}")
        finally:
            await cache.close()

    asyncio.run(scenario())
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
