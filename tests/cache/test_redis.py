from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest
import redis

from gateway.cache import build_cache, build_single_flight, cache_key
from gateway.cache.base import ReplicaLock
from gateway.cache.memory import MemoryCache
from gateway.cache.redis import RedisCache
from gateway.config import CacheSettings
from gateway.errors import ConfigError
from tests.cache.helpers import PREFIX, Decisions, expected, flights_over, redis_cache
from tests.servers import RedisServer


def _key(policy: str = "cascade", tenant: str | None = "key-1") -> str:
    return cache_key(
        policy_name=policy,
        policy_hash="h",
        model_id="m",
        scoring_mode="logits",
        messages=[{"role": "user", "content": "hi"}],
        documents=[],
        params={"temperature": 0},
        tenant=tenant,
    )


def test_hit_after_miss(redis_server: RedisServer) -> None:
    async def scenario() -> None:
        cache = redis_cache(redis_server.url)
        flights = flights_over(cache)
        decisions = Decisions()
        key = _key()
        try:
            first = await flights.get_or_compute(key, decisions.for_key(key))
            second = await flights.get_or_compute(key, decisions.for_key(key))
        finally:
            await cache.close()
        assert (first.cached, second.cached) == (False, True)
        assert first.value == second.value == expected(key)
        assert decisions.total == 1

    asyncio.run(scenario())


def _calls(server: RedisServer, command: str) -> int:
    stats = redis.Redis.from_url(server.url).info("commandstats")
    return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))


def test_reads_of_one_loop_turn_are_one_mget(redis_server: RedisServer) -> None:
    async def scenario() -> None:
        cache = redis_cache(redis_server.url)
        try:
            await cache.set("a", b"1", 60)
            await cache.set("b", b"2", 60)
            before = _calls(redis_server, "mget")
            values = await asyncio.gather(*(cache.get(k) for k in ("a", "b", "a", "missing")))
            assert values == [b"1", b"2", b"1", None]
            assert _calls(redis_server, "mget") == before + 1
            assert _calls(redis_server, "get") == 0
            # Reads of later turns make their own batch.
            assert await cache.get("b") == b"2"
            assert _calls(redis_server, "mget") == before + 2
        finally:
            await cache.close()

    asyncio.run(scenario())


def test_a_reader_that_leaves_does_not_disturb_its_batch(redis_server: RedisServer) -> None:
    async def scenario() -> None:
        cache = redis_cache(redis_server.url)
        try:
            await cache.set("a", b"1", 60)
            leaving = asyncio.ensure_future(cache.get("a"))
            staying = asyncio.ensure_future(cache.get("a"))
            await asyncio.sleep(0)  # both queued, the batch not yet answered
            leaving.cancel()
            assert await staying == b"1"
            assert leaving.cancelled()
        finally:
            await cache.close()

    asyncio.run(scenario())


def test_every_key_has_a_ttl(redis_server: RedisServer) -> None:
    lock_ttls: list[int] = []
    raw = redis.Redis.from_url(redis_server.url)

    async def scenario() -> None:
        cache = redis_cache(redis_server.url)
        flights = flights_over(cache)

        async def compute() -> bytes:
            lock_ttls.extend(raw.pttl(name) for name in raw.keys(f"{PREFIX}*:lock"))
            return b"v"

        try:
            for policy in ("cascade", "guard"):
                await flights.get_or_compute(_key(policy), compute)
            await cache.set("cascade:direct", b"v", ttl_s=30)
        finally:
            await cache.close()

    asyncio.run(scenario())
    names = raw.keys("*")
    assert len(names) == 3
    assert all(0 < raw.ttl(name) <= 60 for name in names)
    assert len(lock_ttls) == 2  # a lock existed while computing, with its own expiry
    assert all(0 < ttl <= 2000 for ttl in lock_ttls)
    raw.close()


def test_tenants_never_share_an_entry(redis_server: RedisServer) -> None:
    async def scenario() -> None:
        cache = redis_cache(redis_server.url)
        flights = flights_over(cache)
        decisions = Decisions()
        alice, bob = _key(tenant="alice"), _key(tenant="bob")
        try:
            await flights.get_or_compute(alice, decisions.for_key(alice))
            assert await cache.get(bob) is None
            for_bob = await flights.get_or_compute(bob, decisions.for_key(bob))
        finally:
            await cache.close()
        assert not for_bob.cached
        assert for_bob.value == expected(bob)
        assert decisions.calls == {alice: 1, bob: 1}

    asyncio.run(scenario())


def test_clear_by_policy_removes_only_that_policy(redis_server: RedisServer) -> None:
    raw = redis.Redis.from_url(redis_server.url)
    raw.set("other-app:cascade:x", b"v")

    async def scenario() -> tuple[int, int]:
        cache = redis_cache(redis_server.url)
        try:
            policies = ("cascade", "cascade", "guard", "cas*", "cascade:x")
            for number, policy in enumerate(policies):
                await cache.set(_key(policy, tenant=f"tenant-{number}"), b"v", ttl_s=60)
            removed = await cache.clear("cascade")
            removed_rest = await cache.clear()
        finally:
            await cache.close()
        return removed, removed_rest

    removed, removed_rest = asyncio.run(scenario())
    assert removed == 2
    assert removed_rest == 3
    assert raw.keys("*") == [b"other-app:cascade:x"]
    raw.close()


def test_password_in_url_authenticates_and_is_never_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="gateway.cache")
    server = RedisServer(tmp_path, password="s3cret-Pa55")
    server.start()

    async def scenario() -> None:
        good = redis_cache(server.url)
        bad = redis_cache(server.url.replace("s3cret-Pa55", "wr0ng-Pa55"))
        try:
            await good.set("p:k", b"v", ttl_s=60)
            assert await good.get("p:k") == b"v"
            for _ in range(5):
                assert await bad.get("p:k") is None
            assert not bad.status.ok
            assert "wr0ng" not in bad.status.reason
        finally:
            await good.close()
            await bad.close()

    try:
        asyncio.run(scenario())
    finally:
        server.stop()
    assert caplog.records, "the breaker should have logged the outage"
    assert "Pa55" not in caplog.text
    assert f"redis://127.0.0.1:{server.port}/0" in caplog.text


def test_identical_misses_on_two_replicas_compute_once(redis_server: RedisServer) -> None:
    async def scenario() -> None:
        replicas = [redis_cache(redis_server.url) for _ in range(2)]
        flights = [flights_over(cache) for cache in replicas]
        decisions = Decisions(delay_s=0.2)
        key = _key()
        try:
            results = await asyncio.gather(
                *(flights[i % 2].get_or_compute(key, decisions.for_key(key)) for i in range(10))
            )
        finally:
            for cache in replicas:
                await cache.close()
        assert decisions.total == 1
        assert {result.value for result in results} == {expected(key)}
        assert sum(result.cached for result in results) == 5  # the other replica's callers

    asyncio.run(scenario())


def test_replica_computes_itself_when_the_lock_holder_fails(redis_server: RedisServer) -> None:
    async def scenario() -> None:
        replicas = [redis_cache(redis_server.url) for _ in range(2)]
        holder, waiter = (flights_over(cache, lock_ttl_ms=5000) for cache in replicas)
        key = _key()

        async def failing() -> bytes:
            await asyncio.sleep(0.1)
            raise RuntimeError("engine failed")

        try:
            failed = asyncio.create_task(holder.get_or_compute(key, failing))
            await asyncio.sleep(0.02)
            loop = asyncio.get_running_loop()
            start = loop.time()
            lookup = await waiter.get_or_compute(key, Decisions().for_key(key))
            waited = loop.time() - start
            with pytest.raises(RuntimeError):
                await failed
        finally:
            for cache in replicas:
                await cache.close()
        assert lookup.value == expected(key)
        assert waited < 1.0  # well before the 5 s lock would have expired

    asyncio.run(scenario())


def test_unreachable_redis_is_a_miss_and_degraded() -> None:
    from tests.servers import free_port

    async def scenario() -> None:
        cache = redis_cache(f"redis://127.0.0.1:{free_port()}/0")
        flights = flights_over(cache)
        decisions = Decisions()
        key = _key()
        try:
            for _ in range(6):
                assert (await flights.get_or_compute(key, decisions.for_key(key))).value
        finally:
            await cache.close()
        assert decisions.total == 6
        assert cache.status.state == "degraded"
        assert "ConnectionError" in cache.status.reason

    asyncio.run(scenario())


def test_build_cache_picks_memory_without_url_and_redis_with_one() -> None:
    async def scenario() -> None:
        memory = build_cache(CacheSettings())
        assert isinstance(memory, MemoryCache)
        assert not isinstance(memory, ReplicaLock)
        remote = build_cache(CacheSettings(url="redis://user:pw@127.0.0.1:1/0"))
        assert isinstance(remote, RedisCache)
        assert isinstance(remote, ReplicaLock)
        flights = build_single_flight(remote, CacheSettings())
        assert flights.in_flight == 0
        await remote.close()

    asyncio.run(scenario())


def test_url_with_another_scheme_is_a_config_error_naming_the_key() -> None:
    with pytest.raises(ConfigError, match=r"cache\.url") as caught:
        build_cache(CacheSettings(url="http://user:topsecret@host:6379"))
    assert "topsecret" not in str(caught.value)
