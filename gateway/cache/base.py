"""The decision cache's interface: what the pipeline may ask of any cache.

Values are opaque bytes (the pipeline serializes its decision). Every implementation fails open:
`get` answers a miss and `set` does nothing when the backing store is down or slow, so a broken
cache costs model work, never a failed request. Only `clear`, an operator's command, reports an
unusable store, as `CacheUnavailable`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

from gateway.errors import ServiceError


class CacheUnavailable(ServiceError):
    """The cache store could not be reached for an operator's command (`cache clear`)."""

    code = "cache_unavailable"


@dataclass(frozen=True)
class CacheStatus:
    """What /health/ready reports for the cache; `degraded` never makes the gateway unready."""

    state: Literal["ok", "degraded"]
    reason: str = ""

    @property
    def ok(self) -> bool:
        return self.state == "ok"


class DecisionCache(Protocol):
    """Cached decisions by key (see `gateway.cache.key.cache_key`); never raises on a store failure.

    `get` returns None on a miss *or* when the store is unusable; `set` stores with a time to
    live in seconds, or silently skips when the store is unusable; `clear` deletes every entry (or
    one policy's) and returns how many it removed; `close` releases connections.
    """

    @property
    def status(self) -> CacheStatus: ...

    async def get(self, key: str) -> bytes | None: ...

    async def set(self, key: str, value: bytes, ttl_s: int) -> None: ...

    async def clear(self, policy: str | None = None) -> int: ...

    async def close(self) -> None: ...


@runtime_checkable
class ReplicaLock(Protocol):
    """A short lock shared by gateway replicas, so identical misses compute once across them.

    `acquire_lock` returns a token when this replica should compute: the lock is now held, or
    the store is unusable (then the token is "" and nothing is locked: fail open). It returns None
    when another replica holds the lock. `release_lock` frees the lock only if the token still owns
    it.
    """

    async def acquire_lock(self, key: str, ttl_ms: int) -> str | None: ...

    async def release_lock(self, key: str, token: str) -> None: ...
