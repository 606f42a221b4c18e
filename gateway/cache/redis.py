"""The Redis cache: shared by gateway replicas, failing open within a time limit on every call.

Every call runs under `asyncio.timeout(timeout_s)` as well as the socket time-outs, because a
frozen Redis (SIGSTOP, a stuck proxy) accepts TCP connections and never answers. Any failure (time
out, refused connection, any Redis error) is a miss for `get` and a skipped write for `set`, and
counts towards the circuit breaker, which stops calling Redis for a while after repeated failures
so a dead Redis costs nothing at all per request.

Reads are batched: every `get` issued in the same turn of the event loop goes to Redis in one
`MGET` (the gateway's requests all reach their look-up in the turn that parsed them, so under
load a turn holds many). One round trip of redis-py costs ~150 us of CPU, about as much as the
rest of a cache hit; a batch shares it. A lone request pays one extra loop turn (microseconds).
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Awaitable, Callable, Iterator
from typing import TypeVar

from gateway.cache.base import CacheStatus, CacheUnavailable
from gateway.cache.connection import RedisCallFailed, RedisLink, connect
from gateway.config import CacheSettings

T = TypeVar("T")

CLEAR_BATCH = 500
_DIGEST_GLOB = "?" * 64  # a key is `{policy}:{sha256 hex}`; lock keys end in ":lock" and differ

# Delete the lock only if this replica still owns it (it may have expired and been retaken).
_RELEASE = """
if redis.call("get", KEYS[1]) == ARGV[1] then return redis.call("del", KEYS[1]) end
return 0
"""


class _Unavailable(Exception):
    """Redis was skipped (circuit open) or failed; the public methods turn this into a miss."""


class RedisCache:
    """Decisions in Redis under `settings.key_prefix`, each written with a TTL.

    Build one with `RedisCache.from_url`; the constructor takes a ready `RedisLink` so other
    callers can pass their own. Every call is limited to `settings.timeout_s`; after
    `settings.breaker_failures` failures in a row, Redis is left alone for
    `settings.breaker_cooldown_s` seconds.
    """

    def __init__(self, link: RedisLink, settings: CacheSettings) -> None:
        self._link = link
        self._client = link.client
        self._timeout_s = settings.timeout_s
        self._prefix = settings.key_prefix
        self._where = link.where
        self._breaker = link.breaker("redis cache", settings)
        self._reads = ReadBatcher(self._get_many)

    @classmethod
    def from_url(cls, url: str, settings: CacheSettings) -> RedisCache:
        """A cache on `url` (see `connect`), on a pool of `settings.max_connections`."""
        link = connect(url, timeout_s=settings.timeout_s, max_connections=settings.max_connections)
        return cls(link, settings)

    @property
    def status(self) -> CacheStatus:
        if self._breaker.state == "closed":
            return CacheStatus("ok")
        return CacheStatus("degraded", f"{self._where}: {self._breaker.last_failure}")

    async def get(self, key: str) -> bytes | None:
        return await self._reads.get(self._prefix + key)

    async def _get_many(self, keys: list[str]) -> list[bytes | None]:
        """The values of `keys` (full Redis keys), one `MGET`; all misses if Redis fails."""
        try:
            values = await self._guarded(lambda: self._client.mget(keys))
        except _Unavailable:
            return [None] * len(keys)
        return [value if isinstance(value, bytes) else None for value in values]

    async def set(self, key: str, value: bytes, ttl_s: int) -> None:
        if ttl_s <= 0:
            raise ValueError("ttl_s must be positive")
        try:
            await self._guarded(lambda: self._client.set(self._prefix + key, value, ex=ttl_s))
        except _Unavailable:
            return

    async def acquire_lock(self, key: str, ttl_ms: int) -> str | None:
        token = secrets.token_hex(16)
        try:
            taken = await self._guarded(
                lambda: self._client.set(self._lock_key(key), token, nx=True, px=ttl_ms)
            )
        except _Unavailable:
            return ""  # fail open: compute without a lock
        return token if taken else None

    async def release_lock(self, key: str, token: str) -> None:
        if not token:
            return
        try:
            await self._guarded(lambda: self._client.eval(_RELEASE, 1, self._lock_key(key), token))
        except _Unavailable:
            return  # the lock expires by itself

    async def clear(self, policy: str | None = None) -> int:
        """Delete by SCAN + UNLINK; each Redis call is time-limited; raises `CacheUnavailable`."""
        owner = "*" if policy is None else _escape_glob(policy)
        pattern = f"{_escape_glob(self._prefix)}{owner}:{_DIGEST_GLOB}"
        removed = 0
        cursor = 0
        try:
            while True:
                async with asyncio.timeout(self._timeout_s):
                    cursor, keys = await self._client.scan(cursor, match=pattern, count=CLEAR_BATCH)
                if keys:
                    async with asyncio.timeout(self._timeout_s):
                        removed += int(await self._client.unlink(*keys))
                if cursor == 0:
                    return removed
        except Exception as exc:  # any failure: tell the operator, without the URL's password
            raise CacheUnavailable(
                f"cannot clear the cache at {self._where} ({self._reason(exc)}); "
                f"{removed} entries were removed before the failure"
            ) from None

    async def close(self) -> None:
        await self._reads.close()
        await self._client.aclose()

    def _lock_key(self, key: str) -> str:
        return f"{self._prefix}{key}:lock"

    async def _guarded(self, call: Callable[[], Awaitable[T]]) -> T:
        """Fail open: every failure of the store (and every call the open circuit does not
        make) is `_Unavailable`, a miss for reads and a skipped write."""
        was_open = self._breaker.state == "open"
        try:
            return await self._link.guarded(self._breaker, self._timeout_s, call)
        except RedisCallFailed as exc:
            if not was_open and self._breaker.state == "open":
                await self._drop_idle_connections()
            raise _Unavailable from exc

    async def _drop_idle_connections(self) -> None:
        """Idle pooled connections may belong to a Redis that died: close them when the circuit
        opens, so the probes and the calls after recovery use fresh ones, not dead sockets."""
        try:
            async with asyncio.timeout(self._timeout_s):
                await self._client.connection_pool.disconnect(inuse_connections=False)
        except Exception:  # they are reconnected, or fail, on next use anyway
            return

    def _reason(self, exc: BaseException) -> str:
        return self._link.reason(exc, self._timeout_s)


class ReadBatcher:
    """Coalesces the reads of one event-loop turn into one call of `fetch(keys)`.

    `get(key)` queues the key and waits; at the end of the turn, one task fetches every queued key
    (each once) and hands each caller its value. A caller that is cancelled only stops waiting;
    the batch goes on for the others. `fetch` owns the failure policy (the cache's turns every
    failure into misses); should it raise anyway, every caller of that batch gets the error.
    """

    def __init__(self, fetch: Callable[[list[str]], Awaitable[list[bytes | None]]]) -> None:
        self._fetch = fetch
        self._queued: dict[str, list[asyncio.Future[bytes | None]]] = {}
        self._batches: set[asyncio.Task[None]] = set()  # strong references while they run

    async def get(self, key: str) -> bytes | None:
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[bytes | None] = loop.create_future()
        if not self._queued:
            loop.call_soon(self._flush)
        self._queued.setdefault(key, []).append(waiter)
        return await waiter

    def _flush(self) -> None:
        queued, self._queued = self._queued, {}
        batch = asyncio.get_running_loop().create_task(self._run(queued))
        self._batches.add(batch)
        batch.add_done_callback(self._batches.discard)

    async def _run(self, queued: dict[str, list[asyncio.Future[bytes | None]]]) -> None:
        keys = list(queued)
        try:
            values = await self._fetch(keys)
        except Exception as exc:  # a broken `fetch`: each caller gets its error
            for waiter in _waiting(queued):
                waiter.set_exception(exc)
            return
        except BaseException:  # cancelled (shut down): so are the callers
            for waiter in _waiting(queued):
                waiter.cancel()
            raise
        for key, value in zip(keys, values, strict=True):
            for waiter in queued[key]:
                if not waiter.done():  # a caller that was cancelled meanwhile
                    waiter.set_result(value)

    async def close(self) -> None:
        for batch in list(self._batches):
            batch.cancel()
        await asyncio.gather(*self._batches, return_exceptions=True)


def _waiting(
    queued: dict[str, list[asyncio.Future[bytes | None]]],
) -> Iterator[asyncio.Future[bytes | None]]:
    for waiters in queued.values():
        yield from (waiter for waiter in waiters if not waiter.done())


def _escape_glob(text: str) -> str:
    """Escape Redis glob metacharacters so a policy name matches only itself."""
    return "".join("\\" + char if char in "\\*?[]^" else char for char in text)
