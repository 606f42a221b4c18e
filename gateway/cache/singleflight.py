"""Single flight: concurrent identical misses compute once, in this process and across replicas.

In a process, the first caller for a key starts one task (look up, compute, store) and every
caller of that key awaits it; the task is shielded, so a caller that goes away (a client that
disconnects) neither cancels the work nor fails the others. An exception in the computation
reaches the callers of that flight only; the next caller starts afresh.

Across replicas (when the cache is also a `ReplicaLock`, i.e. Redis), the task takes a short lock
before computing. A replica that finds the lock taken polls the cache for the holder's value and
retakes the lock itself as soon as the holder lets go without delivering; it never waits longer
than the lock's time to live. Every step fails open: an unusable cache means "compute".
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from gateway.cache.base import DecisionCache, ReplicaLock

DEFAULT_LOCK_TTL_MS = 10_000
POLL_INTERVAL_S = 0.05


@dataclass(frozen=True)
class Lookup:
    """The value for a key, and whether it came from the cache (not computed for this flight)."""

    value: bytes
    cached: bool


@dataclass(frozen=True)
class Uncached:
    """A computed value for this flight's callers that must not be stored (e.g. a fallback)."""

    value: bytes


Compute = Callable[[], Awaitable["bytes | Uncached"]]
E = TypeVar("E")


class SingleFlight:
    """Look-up-or-compute over `cache`, storing computed values for `ttl_s` seconds.

    `lock` (usually the same Redis cache) makes identical misses compute once across replicas;
    without it, once per process.
    """

    def __init__(
        self,
        cache: DecisionCache,
        *,
        ttl_s: int,
        lock: ReplicaLock | None = None,
        lock_ttl_ms: int = DEFAULT_LOCK_TTL_MS,
        poll_interval_s: float = POLL_INTERVAL_S,
    ) -> None:
        self._cache = cache
        self._ttl_s = ttl_s
        self._lock = lock
        self._lock_ttl_ms = lock_ttl_ms
        self._poll_interval_s = poll_interval_s
        self._flights: dict[str, asyncio.Task[Lookup]] = {}

    @property
    def in_flight(self) -> int:
        return len(self._flights)

    async def get_or_compute(
        self, key: str, compute: Compute, *, ttl_s: int | None = None
    ) -> Lookup:
        """The cached value for `key`, or the value of one shared call of `compute`."""
        task = self._flights.get(key)
        if task is None:
            # A hit is one look-up: no task, no lock.
            value = await self._cache.get(key)
            if value is not None:
                return Lookup(value, cached=True)
            task = self._flights.get(key)  # another caller may have taken off meanwhile
        if task is None:
            task = asyncio.create_task(self._fly(key, compute, ttl_s or self._ttl_s))
            self._flights[key] = task
            task.add_done_callback(lambda done: self._land(key, done))
        return await asyncio.shield(task)

    async def get_or_stream(
        self,
        key: str,
        events: Callable[[], AsyncIterator[E]],
        value: Callable[[list[E]], bytes | Uncached],
        *,
        ttl_s: int | None = None,
    ) -> AsyncGenerator[E | Lookup, None]:
        """`get_or_compute` for a computation that yields `events` as it goes, whose value is
        `value(all its events)`. The caller whose call computes gets the events live, then the
        `Lookup`; any other caller gets only the `Lookup` (a hit, or another caller's value)."""
        queue: asyncio.Queue[E | None] = asyncio.Queue()

        async def compute() -> bytes | Uncached:  # runs only for the caller that leads
            seen: list[E] = []
            try:
                async for event in events():
                    queue.put_nowait(event)
                    seen.append(event)
            finally:
                queue.put_nowait(None)
            return value(seen)

        flight = asyncio.ensure_future(self.get_or_compute(key, compute, ttl_s=ttl_s))
        try:
            async for event in _drain(queue, flight):
                yield event
            yield await flight
        finally:
            flight.cancel()  # a caller gone: the shared flight itself goes on (shielded)

    def _land(self, key: str, task: asyncio.Task[Lookup]) -> None:
        if self._flights.get(key) is task:
            del self._flights[key]
        if not task.cancelled():
            task.exception()  # retrieved here, so a flight nobody awaits any more logs nothing

    async def _fly(self, key: str, compute: Compute, ttl_s: int) -> Lookup:
        """A miss (the caller just looked): lock across replicas if we can, then compute."""
        if self._lock is None:
            return await self._compute(key, compute, ttl_s)
        token = await self._lock.acquire_lock(key, self._lock_ttl_ms)
        if token is None:
            waited = await self._wait_for_holder(key, self._lock)
            if isinstance(waited, Lookup):
                return waited
            token = waited
        try:
            return await self._compute(key, compute, ttl_s)
        finally:
            await self._lock.release_lock(key, token)

    async def _wait_for_holder(self, key: str, lock: ReplicaLock) -> Lookup | str:
        """The holder's value, or a token once this replica should compute after all."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._lock_ttl_ms / 1000
        while loop.time() < deadline:
            await asyncio.sleep(self._poll_interval_s)
            value = await self._cache.get(key)
            if value is not None:
                return Lookup(value, cached=True)
            token = await lock.acquire_lock(key, self._lock_ttl_ms)
            if token is not None:  # the holder let go without storing, or the cache is down
                return token
        return ""

    async def _compute(self, key: str, compute: Compute, ttl_s: int) -> Lookup:
        result = await compute()
        if isinstance(result, Uncached):
            return Lookup(result.value, cached=False)
        await self._cache.set(key, result, ttl_s)
        return Lookup(result, cached=False)


async def _drain(
    queue: asyncio.Queue[E | None], flight: asyncio.Future[Lookup]
) -> AsyncIterator[E]:
    """What the computation puts in `queue` (ended by None, before `flight` ends); nothing when
    `flight` ends without this caller's computation having run."""
    while not (flight.done() and queue.empty()):
        getter = asyncio.ensure_future(queue.get())
        try:
            await asyncio.wait((getter, flight), return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not getter.done():
                getter.cancel()  # an item put meanwhile stays in the queue
        if getter.cancelled() or not getter.done():
            continue
        event = getter.result()
        if event is None:
            return
        yield event
