"""Replicas' counters added up in Redis, failing open like the cache.

Each replica adds what its cells counted since their last flush (see `recorder`) to one hash per
minute,
`{prefix}stats:m:{minute}` (kept `MINUTE_TTL_S`, a little over the longest window), and to
`{prefix}stats:total` (kept `stats.redis_ttl_s` after the last write), in one pipelined round
trip. A window is the sum of its minute hashes, read in one round trip.

Every call runs under a time limit and behind a circuit breaker, as the Redis cache does; a
failure raises `StatsUnavailable`, and the recorder then shows this replica's own counts (the
page says "this replica only") and sends those counts again with the next flush. (A flush that
timed out after Redis applied it is thus counted twice: the counters are at least once.)
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from redis.asyncio import Redis

from gateway.cache.breaker import CircuitBreaker
from gateway.cache.connection import RedisCallFailed, RedisLink, connect
from gateway.config import Settings
from gateway.stats.cells import FLOAT_FIELDS, Cell, Key, flatten, unflatten
from gateway.stats.recorder import Minutes, StatsUnavailable

T = TypeVar("T")

MINUTE_TTL_S = 65 * 60
MAX_CONNECTIONS = 4  # a flush every few seconds and the dashboard's reads
_FLOAT_PREFIXES = ("s.",)


class RedisStats:
    """The shared counters on a ready client; `where` names the server, without secrets."""

    def __init__(
        self,
        client: Redis,
        *,
        timeout_s: float,
        key_prefix: str,
        total_ttl_s: int,
        where: str,
        secret: str | None = None,
        failure_threshold: int = 5,
        cooldown_s: float = 5.0,
    ) -> None:
        self._client = client
        self._timeout_s = timeout_s
        self._prefix = key_prefix + "stats:"
        self._total_ttl_s = total_ttl_s
        self._where = where
        self._secret = secret
        self._breaker = CircuitBreaker(
            f"redis stats at {where}",
            failure_threshold=failure_threshold,
            cooldown_s=cooldown_s,
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> RedisStats:
        """On the cache's Redis (`cache.url`, `cache.timeout_s`, `cache.key_prefix`); the URL
        was checked when the cache was built."""
        url = settings.cache.url
        assert url is not None
        timeout_s = max(settings.cache.timeout_s, 0.2)  # off the request path: a little slack
        link = connect(url, timeout_s=timeout_s, max_connections=MAX_CONNECTIONS)
        return cls(
            link.client,
            timeout_s=timeout_s,
            key_prefix=settings.cache.key_prefix,
            total_ttl_s=settings.stats.redis_ttl_s,
            where=link.where,
            secret=link.secret,
            failure_threshold=settings.cache.breaker_failures,
            cooldown_s=settings.cache.breaker_cooldown_s,
        )

    @property
    def where(self) -> str:
        return self._where

    async def add(self, minutes: Minutes) -> None:
        """Add each minute's cells to its hash and to the total, in one round trip."""
        if not minutes:
            return

        async def write() -> None:
            pipe = self._client.pipeline(transaction=False)
            total = self._prefix + "total"
            for minute, cells in minutes.items():
                key = f"{self._prefix}m:{minute}"
                for field, value in flatten(cells):
                    for target in (key, total):
                        if _is_float(field):
                            pipe.hincrbyfloat(target, field, float(value))
                        else:
                            pipe.hincrby(target, field, int(value))
                pipe.expire(key, MINUTE_TTL_S)
            pipe.expire(total, self._total_ttl_s)
            await pipe.execute()

        await self._guarded(write)

    async def read(self, minutes: list[int] | None) -> dict[Key, Cell]:
        """The sum of the given minutes' hashes; `None`: the total."""
        names = (
            [self._prefix + "total"]
            if minutes is None
            else [f"{self._prefix}m:{minute}" for minute in minutes]
        )

        async def fetch() -> list[Any]:
            pipe = self._client.pipeline(transaction=False)
            for name in names:
                pipe.hgetall(name)
            result: list[Any] = await pipe.execute()
            return result

        hashes = await self._guarded(fetch)
        out: dict[Key, Cell] = {}
        for raw in hashes:
            fields = {}
            for field, value in (raw or {}).items():
                try:
                    fields[_text(field)] = float(value)
                except (TypeError, ValueError):
                    continue
            unflatten(fields, out)
        return out

    async def close(self) -> None:
        await self._client.aclose()

    async def _guarded(self, call: Callable[[], Awaitable[T]]) -> T:
        """Fail open: any failure shows this replica's counts (`StatsUnavailable`)."""
        link = RedisLink(self._client, self._where, self._secret)
        try:
            return await link.guarded(self._breaker, self._timeout_s, call)
        except RedisCallFailed as exc:
            raise StatsUnavailable(f"{self._where}: {exc}") from None


def _is_float(flat: str) -> bool:
    name = flat.rpartition("|")[2]
    return name in FLOAT_FIELDS or name.startswith(_FLOAT_PREFIXES)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
