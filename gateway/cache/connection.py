"""One way to reach Redis, for the decision cache and the rate limiter.

`connect` builds a client on a pool that blocks for a free connection at most `timeout_s`
(rather than failing at once under a burst), with redis-py's own retries off: the time limit is
the caller's to spend. `RedisLink` names the server without credentials for log lines, masks the
password in failure reasons, and builds the circuit breaker each user of Redis keeps.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar
from urllib.parse import unquote, urlsplit

from redis.asyncio import BlockingConnectionPool, Redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from gateway.cache.breaker import CircuitBreaker
from gateway.config import CacheSettings
from gateway.errors import ConfigError

SCHEMES = ("redis", "rediss", "unix")

T = TypeVar("T")


class RedisCallFailed(Exception):
    """A guarded call was not made (the circuit is open) or failed; the message says why."""


@dataclass(frozen=True)
class RedisLink:
    """A Redis client; `where` names the server and holds no secret, `secret` is its password."""

    client: Redis
    where: str
    secret: str | None = None

    def breaker(self, what: str, settings: CacheSettings) -> CircuitBreaker:
        """A circuit breaker for `what` ("redis cache") on this server, tuned by `settings`."""
        return CircuitBreaker(
            f"{what} at {self.where}",
            failure_threshold=settings.breaker_failures,
            cooldown_s=settings.breaker_cooldown_s,
        )

    async def guarded(
        self, breaker: CircuitBreaker, timeout_s: float, call: Callable[[], Awaitable[T]]
    ) -> T:
        """`call()` within `timeout_s`, through `breaker`: every failure (a time-out, a refused
        connection, any Redis error) is counted and raised as `RedisCallFailed`, as is a call
        the open circuit does not make. Each user of Redis turns that into its fail-open path."""
        if not breaker.allow():
            raise RedisCallFailed(breaker.last_failure)
        try:
            async with asyncio.timeout(timeout_s):
                result = await call()
        except asyncio.CancelledError:
            breaker.abandon()
            raise
        except Exception as exc:
            reason = self.reason(exc, timeout_s)
            breaker.record_failure(reason)
            raise RedisCallFailed(reason) from exc
        breaker.record_success()
        return result

    def reason(self, exc: BaseException, timeout_s: float) -> str:
        """Why a call failed, for log lines and health checks, never with the password."""
        if isinstance(exc, TimeoutError) and not str(exc):
            text = f"no answer within {timeout_s:g} s"
        else:
            text = str(exc)[:200]
        if self.secret:
            text = text.replace(self.secret, "***")
        return f"{type(exc).__name__}: {text}"


def connect(url: str, *, timeout_s: float, max_connections: int) -> RedisLink:
    """A client on a `redis://`, `rediss://` or `unix://` URL (password or ACL user in it);
    connects lazily, so only a malformed URL fails here (`ConfigError`)."""
    parts = urlsplit(url)
    if parts.scheme not in SCHEMES:
        raise ConfigError(
            "cache.url (or GATEWAY_CACHE__URL): the scheme must be redis://, rediss:// or "
            f"unix://, not {parts.scheme + '://' if parts.scheme else 'none'}"
        )
    try:
        where = describe_url(url)
        pool = BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=timeout_s,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry=Retry(NoBackoff(), 0),
            lib_name=None,
            lib_version=None,
        )
    except ValueError as exc:  # redis-py's messages name the bad part, never the password
        raise ConfigError(f"cache.url (or GATEWAY_CACHE__URL): {exc}") from exc
    secret = unquote(parts.password) if parts.password else None
    return RedisLink(Redis.from_pool(pool), where, secret)


def describe_url(url: str) -> str:
    """The URL without user or password, for log lines."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return f"unix://{parts.path}"
    host = parts.hostname or "localhost"
    port = parts.port or 6379
    return f"{parts.scheme}://{host}:{port}{parts.path or ''}"
