"""What the routes reach through `app.state.gateway`: the components built in the lifespan."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from gateway.api.keys import KeyRing
from gateway.api.throttle import FailedLogins
from gateway.cache.base import DecisionCache
from gateway.config import Settings
from gateway.metrics import Metrics
from gateway.pipeline import Pipeline
from gateway.policy import PolicyStore
from gateway.ratelimit import RateLimiter
from gateway.stats.recorder import StatsRecorder


@dataclass
class GatewayState:
    settings: Settings
    pipeline: Pipeline
    policies: PolicyStore
    cache: DecisionCache
    metrics: Metrics
    engine_ready: bool = True
    draining: bool = False
    started_at: float = field(default_factory=time.time)
    queue_depth_source: Any = None
    keys: KeyRing = field(default_factory=KeyRing)
    rate_limiter: RateLimiter | None = None
    inflight: int = 0
    """API requests being handled (health and metrics excluded); kept by the request middleware."""
    engine_check: Callable[[], Awaitable[list[str]]] | None = None
    """A look at a remote model server (vLLM): what is wrong with it, as sentences."""
    failed_logins: FailedLogins = field(default_factory=lambda: FailedLogins(30, 60.0))
    """Failed authentications per client address (`_guard` sizes it from `auth`)."""
    stats: StatsRecorder | None = None
    """The dashboard's counters (None with `stats.enabled: false`)."""

    def begin_drain(self) -> None:
        """Readiness fails from now on; requests keep being served while they drain."""
        self.draining = True

    async def wait_idle(self, timeout_s: float, *, poll_s: float = 0.05) -> bool:
        """Wait until no API request is in flight, at most `timeout_s`; True if none is."""
        deadline = time.monotonic() + timeout_s
        while self.inflight > 0 and time.monotonic() < deadline:
            await asyncio.sleep(poll_s)
        return self.inflight == 0

    def queue_depth(self) -> int:
        source = self.queue_depth_source
        return int(source.queue_depth) if source is not None else 0

    async def readiness(self) -> dict[str, Any]:
        problems = await self.engine_check() if self.engine_check is not None else []
        cache = self.cache.status
        policies_ok = bool(self.policies.current.policies)
        engine_ok = self.engine_ready and not problems
        ready = engine_ok and policies_ok and not self.draining
        report: dict[str, Any] = {
            "status": "ready" if ready else "not_ready",
            "model": self.pipeline.engine.model_id if self.engine_ready else None,
            "policies": {
                "version": self.policies.current.version,
                "names": sorted(self.policies.current.policies),
                "last_reload_error": self.policies.last_error,
            },
            "cache": {"state": cache.state, "reason": cache.reason},
        }
        if self.engine_check is not None:
            report["engine"] = {
                "state": "ok" if not problems else "unavailable",
                "reason": "; ".join(problems) or None,
            }
        if self.rate_limiter is not None:
            limiter = self.rate_limiter.status
            report["rate_limit"] = {"state": limiter.state, "reason": limiter.reason}
        if self.draining:
            report["draining"] = True
        return report


class StateCollector(Collector):
    """Gauges read from the state at scrape time: degraded stores, in-flight requests, draining."""

    def __init__(self, state: GatewayState) -> None:
        self._state = state

    def collect(self) -> Iterator[GaugeMetricFamily]:
        state = self._state
        yield GaugeMetricFamily(
            "gateway_cache_degraded",
            "1 while the decision cache is unusable (it fails open: every look-up is a miss).",
            value=0 if state.cache.status.ok else 1,
        )
        if state.rate_limiter is not None:
            yield GaugeMetricFamily(
                "gateway_rate_limit_degraded",
                "1 while the shared rate-limit store is unusable (each replica limits alone).",
                value=0 if state.rate_limiter.status.ok else 1,
            )
        yield GaugeMetricFamily(
            "gateway_inflight_requests", "API requests being handled.", value=state.inflight
        )
        yield GaugeMetricFamily(
            "gateway_draining",
            "1 after SIGTERM, while in-flight requests finish.",
            value=1 if state.draining else 0,
        )
