"""What the routes reach through `app.state.gateway`: the components built in the lifespan."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request

from gateway.cache.base import DecisionCache
from gateway.config import Settings
from gateway.metrics import Metrics
from gateway.pipeline import Pipeline
from gateway.policy import PolicyStore


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

    def queue_depth(self) -> int:
        source = self.queue_depth_source
        return int(source.queue_depth) if source is not None else 0

    def authorize_policy(self, request: Request, policy: str) -> None:
        """Hook for per-key policy permissions (see `gateway.api.auth`)."""
        check = getattr(request.state, "authorize_policy", None)
        if check is not None:
            check(policy)

    def readiness(self) -> dict[str, Any]:
        cache = self.cache.status
        policies_ok = bool(self.policies.current.policies)
        ready = self.engine_ready and policies_ok and not self.draining
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
        if self.draining:
            report["draining"] = True
        return report
