"""The one way the cache and the rate limiter reach Redis."""

from __future__ import annotations

import pytest

from gateway.cache.connection import connect, describe_url
from gateway.config import CacheSettings
from gateway.errors import ConfigError


def test_a_described_url_holds_neither_user_nor_password() -> None:
    assert (
        describe_url("redis://app:s3cret@cache.internal:6380/2") == "redis://cache.internal:6380/2"
    )
    assert describe_url("rediss://:s3cret@cache.internal") == "rediss://cache.internal:6379"
    assert describe_url("unix:///run/redis.sock?db=1") == "unix:///run/redis.sock"


def test_the_pool_size_is_the_callers_and_the_password_is_masked_in_reasons() -> None:
    link = connect("redis://:s3cret@127.0.0.1:6390/0", timeout_s=0.1, max_connections=3)
    assert link.client.connection_pool.max_connections == 3
    assert link.where == "redis://127.0.0.1:6390/0"
    reason = link.reason(ConnectionError("AUTH s3cret refused"), 0.1)
    assert reason == "ConnectionError: AUTH *** refused"


def test_the_breaker_is_tuned_by_the_cache_settings() -> None:
    link = connect("redis://127.0.0.1:6390/0", timeout_s=0.1, max_connections=1)
    breaker = link.breaker("redis cache", CacheSettings(breaker_failures=2))
    breaker.record_failure("down")
    assert breaker.state == "closed"
    breaker.record_failure("down")
    assert breaker.state == "open"
    assert breaker.name == "redis cache at redis://127.0.0.1:6390/0"


def test_an_unknown_scheme_names_the_setting() -> None:
    with pytest.raises(ConfigError, match=r"cache\.url .*not http://"):
        connect("http://cache.internal", timeout_s=0.1, max_connections=1)
