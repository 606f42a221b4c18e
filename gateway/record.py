"""What the request path records of each decision: stage latencies, certainty, action, escalations.

Prometheus metrics (`gateway.metrics`) and, when enabled, the dashboard's counters and the
calibration audit (`gateway.stats`). The pipeline calls `observe` once per decision made and
once per cached decision served.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from gateway.completion import Completion
from gateway.metrics import Metrics
from gateway.stats.recorder import StatsRecorder

if TYPE_CHECKING:
    from gateway.pipeline import CompletionInput

__all__ = ["Recorder", "StageTimer"]


@dataclass
class StageTimer:
    """Per-stage latencies of one request, for metrics."""

    started: float = field(default_factory=time.perf_counter)
    stages: dict[str, float] = field(default_factory=dict)

    async def time(self, stage: str, work: Any) -> Any:
        begun = time.perf_counter()
        try:
            return await work
        finally:
            self.stages[stage] = time.perf_counter() - begun


class Recorder:
    """The metrics and, if any, the stats recorder, written once per decision."""

    def __init__(self, metrics: Metrics, stats: StatsRecorder | None = None) -> None:
        self.metrics = metrics
        self.stats = stats

    def observe(
        self, inp: CompletionInput, completion: Completion, timer: StageTimer | None
    ) -> None:
        """A decision served for `inp`: its certainty, its action and, when made now, its
        stages."""
        self.metrics.certainty_of(completion.policy).observe(completion.confidence)
        self.metrics.actions_of(completion.policy, completion.action.value).inc()
        if timer is not None:
            for stage, seconds in timer.stages.items():
                self.metrics.stage_latency_of(stage).observe(seconds)
        if self.stats is not None:
            self.stats.record(completion, timer.stages if timer is not None else None, inp)

    def escalation(
        self, policy: str, outcome: Literal["ok", "error"], cost: float | None = None
    ) -> None:
        """An escalation's outcome and, when the upstream priced it, its cost."""
        self.metrics.escalations.labels(policy, outcome).inc()
        if cost is not None:
            self.metrics.escalation_cost.labels(policy).inc(cost)
