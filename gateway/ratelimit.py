"""Per-key rate limits: `limits.requests_per_minute` for each API key id, with a burst allowance.

The algorithm is GCRA (a token bucket kept as one timestamp per key): each request moves the
key's "theoretical arrival time" on by 60 / requests_per_minute seconds; a request is refused when
that time is more than the burst ahead of now, and the refusal says how long until it would pass.
A key may send `burst` requests at once (default: a minute's worth), then one per interval.

In process by default. With `cache.url` set, the timestamps live in Redis (one atomic script per
request, Redis's own clock), so replicas share each key's allowance. Like the cache, Redis fails
open: every call has a time limit, a circuit breaker stops calling a failing Redis for a while,
and meanwhile each replica limits on its own (per-replica allowance, never a refused request
because Redis is down).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

from gateway.cache.base import CacheStatus
from gateway.cache.connection import RedisCallFailed, RedisLink, connect
from gateway.config import CacheSettings, LimitSettings

_OK = CacheStatus("ok")


class RateLimiter(Protocol):
    """`acquire(key)` admits one request of `key`: 0.0, or the seconds to wait before retrying."""

    @property
    def status(self) -> CacheStatus: ...

    async def acquire(self, key: str) -> float: ...

    async def close(self) -> None: ...


class LocalRateLimiter:
    """GCRA in process; `clock` is monotonic seconds (a fake one in tests)."""

    def __init__(
        self,
        requests_per_minute: int,
        burst: int | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.interval = 60.0 / requests_per_minute
        self.tolerance = self.interval * ((burst or requests_per_minute) - 1)
        self._clock = clock
        self._arrivals: dict[str, float] = {}
        self._next_sweep = 0.0

    @property
    def status(self) -> CacheStatus:
        return _OK

    async def acquire(self, key: str) -> float:
        return self.acquire_now(key)

    def acquire_now(self, key: str) -> float:
        now = self._clock()
        arrival = max(self._arrivals.get(key, now), now)
        wait = arrival - self.tolerance - now
        if wait > 0:
            return wait
        self._arrivals[key] = arrival + self.interval
        if now >= self._next_sweep:
            self._sweep(now)
        return 0.0

    def _sweep(self, now: float) -> None:
        """Forget keys whose allowance is full again: memory stays bounded by active keys."""
        self._arrivals = {k: t for k, t in self._arrivals.items() if t > now}
        self._next_sweep = now + 60.0

    async def close(self) -> None:
        return None


# KEYS[1]: the key's timestamp; ARGV: interval, tolerance (seconds). Returns the wait, as text
# (a Lua number would be truncated to an integer on the way back).
_GCRA = """
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) + tonumber(now_parts[2]) / 1000000
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local arrival = tonumber(redis.call('GET', KEYS[1]) or now)
if arrival < now then arrival = now end
local wait = arrival - tolerance - now
if wait > 0 then return tostring(wait) end
local after = arrival + interval
redis.call('SET', KEYS[1], tostring(after), 'PX', math.ceil((after - now) * 1000) + 1)
return '0'
"""


class RedisRateLimiter:
    """GCRA in Redis, shared by replicas; falls back to `fallback` while Redis is unusable."""

    def __init__(
        self, link: RedisLink, fallback: LocalRateLimiter, settings: CacheSettings
    ) -> None:
        self._link = link
        self._client = link.client
        self._script = link.client.register_script(_GCRA)
        self._fallback = fallback
        self._timeout_s = settings.timeout_s
        self._prefix = settings.key_prefix + "ratelimit:"
        self._where = link.where
        self._args = (repr(fallback.interval), repr(fallback.tolerance))
        self._breaker = link.breaker("redis rate limiter", settings)

    @classmethod
    def from_url(
        cls, url: str, fallback: LocalRateLimiter, settings: CacheSettings
    ) -> RedisRateLimiter:
        """A limiter on `url`, on a pool of `settings.rate_limit_max_connections`."""
        link = connect(
            url,
            timeout_s=settings.timeout_s,
            max_connections=settings.rate_limit_max_connections,
        )
        return cls(link, fallback, settings)

    @property
    def status(self) -> CacheStatus:
        if self._breaker.state == "closed":
            return _OK
        return CacheStatus("degraded", f"{self._where}: {self._breaker.last_failure}")

    async def acquire(self, key: str) -> float:
        try:
            wait = await self._link.guarded(
                self._breaker,
                self._timeout_s,
                lambda: self._script(keys=[self._prefix + key], args=self._args),
            )
        except RedisCallFailed:  # fail open: limit in this process instead
            return self._fallback.acquire_now(key)
        return float(wait)

    async def close(self) -> None:
        await self._client.aclose()


def build_rate_limiter(limits: LimitSettings, cache: CacheSettings) -> RateLimiter | None:
    """None when `limits.requests_per_minute` is unset; Redis-backed when `cache.url` is set."""
    if limits.requests_per_minute is None:
        return None
    local = LocalRateLimiter(limits.requests_per_minute, limits.rate_limit_burst)
    if cache.url is None:
        return local
    return RedisRateLimiter.from_url(cache.url, local, cache)
