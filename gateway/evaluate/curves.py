"""Cascade and guard curves over every threshold, and their one-number summaries.

Cascade: answers with `confidence >= t` are returned, all others escalated (nothing withheld).
Guard: answers with `confidence >= t` are returned, all others withheld (nothing escalated).

Summaries:
- PGR(t), the performance gap recovered: (cascade accuracy - local accuracy) /
  (large accuracy - local accuracy); APGR is its area over the escalation rate from 0 to 1
  (trapezoids between measured thresholds; 0.5 is what escalating at random achieves).
- The escalation rate needed to recover 50 % / 80 % of the gap: the smallest escalation rate
  among the thresholds whose PGR reaches it (what a threshold achieves, not an interpolation).
- AURC, the area under the risk-coverage curve: the sum over thresholds of risk times the
  coverage each one adds (equals the mean selective risk over the items when no two tie).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from gateway.evaluate.sweep import OperatingPoint, Sweep, candidate_thresholds

GAP_TARGETS = (0.5, 0.8)


def cascade_curve(sweep: Sweep) -> list[OperatingPoint]:
    """One point per threshold, ascending: from escalating nothing to escalating everything."""
    return [sweep.point(float(t), 0.0) for t in candidate_thresholds(sweep.items.confidence)]


def guard_curve(sweep: Sweep) -> list[OperatingPoint]:
    """One point per threshold, ascending: from withholding nothing to withholding everything."""
    return [sweep.point(float(t), float(t)) for t in candidate_thresholds(sweep.items.confidence)]


@dataclass(frozen=True)
class CascadeSummary:
    local_accuracy: float
    large_accuracy: float | None
    apgr: float | None
    escalation_for_gap: dict[str, float | None]

    def as_dict(self) -> dict[str, Any]:
        return {
            "local_accuracy": self.local_accuracy,
            "large_accuracy": self.large_accuracy,
            "apgr": self.apgr,
            **{
                f"escalation_for_{key}_gap": value for key, value in self.escalation_for_gap.items()
            },
        }


def performance_gap_recovered(
    curve: list[OperatingPoint], local_accuracy: float, large_accuracy: float
) -> list[float] | None:
    gap = large_accuracy - local_accuracy
    if gap <= 0 or any(p.overall_accuracy is None for p in curve):
        return None
    return [((p.overall_accuracy or 0.0) - local_accuracy) / gap for p in curve]


def summarize_cascade(sweep: Sweep, curve: list[OperatingPoint]) -> CascadeSummary:
    items = sweep.items
    local = float(items.correct.mean())
    none_found: dict[str, float | None] = {_percent(t): None for t in GAP_TARGETS}
    if items.escalated_correct is None:
        return CascadeSummary(local, None, None, none_found)
    large = float(items.escalated_correct.mean())
    pgr = performance_gap_recovered(curve, local, large)
    if pgr is None:
        # The large model is no better than the local one: there is no gap to recover.
        return CascadeSummary(local, large, None, none_found)
    rates = np.array([p.escalation_rate for p in curve])
    gains = np.array(pgr)
    order = np.argsort(rates, kind="mergesort")
    apgr = float(np.trapezoid(gains[order], rates[order]))
    needed: dict[str, float | None] = {}
    for target in GAP_TARGETS:
        reaching = rates[gains >= target - 1e-12]
        needed[_percent(target)] = float(reaching.min()) if reaching.size else None
    return CascadeSummary(local, large, apgr, needed)


def area_under_risk_coverage(curve: list[OperatingPoint]) -> float:
    """See the module docstring; `curve` is a guard curve (coverage falls along it)."""
    by_coverage = sorted(curve, key=lambda p: p.coverage)
    area = 0.0
    previous = 0.0
    for point in by_coverage:
        if point.risk is not None and point.coverage > previous:
            area += point.risk * (point.coverage - previous)
            previous = point.coverage
    return area


def _percent(fraction: float) -> str:
    return f"{round(fraction * 100)}pct"
