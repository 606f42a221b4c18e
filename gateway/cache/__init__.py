"""The decision cache: one protocol, an in-process LRU (default) and Redis (`cache.url`).

The pipeline builds one cache at start-up with `build_cache`, wraps it with
`build_single_flight`, and asks `SingleFlight.get_or_compute(cache_key(...), compute)` for
requests that `is_cacheable`.
"""

from __future__ import annotations

from gateway.cache.base import CacheStatus, CacheUnavailable, DecisionCache, ReplicaLock
from gateway.cache.key import cache_key, is_cacheable
from gateway.cache.memory import MemoryCache
from gateway.cache.singleflight import Lookup, SingleFlight, Uncached
from gateway.config import CacheSettings

__all__ = [
    "CacheStatus",
    "CacheUnavailable",
    "DecisionCache",
    "Lookup",
    "SingleFlight",
    "Uncached",
    "build_cache",
    "build_single_flight",
    "cache_key",
    "is_cacheable",
]


def build_cache(settings: CacheSettings) -> DecisionCache:
    """Redis when `settings.url` is set, else the in-process LRU; connects lazily, never fails
    on an unreachable server (only on a malformed URL, with `ConfigError`)."""
    if settings.url is None:
        return MemoryCache(settings.max_entries)
    from gateway.cache.redis import RedisCache

    return RedisCache.from_url(settings.url, settings)


def build_single_flight(cache: DecisionCache, settings: CacheSettings) -> SingleFlight:
    """Single flight over `cache`, across replicas too when the cache can lock (Redis)."""
    lock = cache if isinstance(cache, ReplicaLock) else None
    return SingleFlight(cache, ttl_s=settings.ttl_s, lock=lock)
