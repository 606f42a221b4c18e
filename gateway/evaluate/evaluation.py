"""Every figure of one evaluation, and `metrics.json`."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.evaluate.curves import (
    CascadeSummary,
    area_under_risk_coverage,
    cascade_curve,
    guard_curve,
    summarize_cascade,
)
from gateway.evaluate.metrics import SHARPNESS_DEFINITION, CalibrationReport, calibration_report
from gateway.evaluate.policy_file import PolicyThresholds
from gateway.evaluate.scores import ScoredItems
from gateway.evaluate.sweep import OperatingPoint, Sweep

METRICS_FILE = "metrics.json"


@dataclass(frozen=True)
class PolicyPoint:
    policy: PolicyThresholds
    point: OperatingPoint

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.policy.name,
            "file": str(self.policy.path),
            "confidence": self.policy.confidence,
            **self.point.as_dict(),
        }


@dataclass(frozen=True)
class Evaluation:
    items: ScoredItems
    calibration: CalibrationReport
    baseline: CalibrationReport | None
    cascade: list[OperatingPoint]
    guard: list[OperatingPoint]
    cascade_summary: CascadeSummary
    aurc: float
    policy: PolicyPoint | None
    confidence_kind: str
    source: str
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """The content of `metrics.json`: the adapter's figures at the top level."""
        calibration = self.calibration.as_dict()
        out: dict[str, Any] = {
            "n": calibration.pop("n"),
            "accuracy": calibration.pop("accuracy"),
            "ece": calibration.pop("ece"),
            "brier": calibration.pop("brier"),
            "auroc": calibration.pop("auroc"),
            "sharpness": calibration.pop("sharpness"),
            **calibration,
            "ece_bins": 10,
            "ece_15_bins": 15,
            "sharpness_definition": SHARPNESS_DEFINITION,
            "confidence_kind": self.confidence_kind,
            "source": self.source,
        }
        if self.baseline is not None:
            out["baseline"] = self.baseline.as_dict()
        out["cascade"] = {
            **self.cascade_summary.as_dict(),
            "curve": [p.as_dict() for p in self.cascade],
        }
        out["guard"] = {"aurc": self.aurc, "curve": [p.as_dict() for p in self.guard]}
        if self.policy is not None:
            out["policy"] = self.policy.as_dict()
        out["notes"] = list(self.notes)
        return out


def evaluate(
    items: ScoredItems,
    *,
    confidence_kind: str,
    source: str,
    policy: PolicyThresholds | None = None,
    notes: list[str] | None = None,
) -> Evaluation:
    sweep = Sweep(items)
    cascade = cascade_curve(sweep)
    guard = guard_curve(sweep)
    all_notes = list(notes or [])
    if items.n < 200:
        all_notes.append(
            f"Only {items.n} items: every figure here has a wide margin of error "
            "(a few hundred items at least are needed for stable calibration figures)."
        )
    if items.escalated_correct is None:
        all_notes.append(
            "No 'escalated_correct' in the data: the cascade's overall accuracy, APGR and the "
            "escalation needed to recover the gap cannot be measured."
        )
    return Evaluation(
        items=items,
        calibration=calibration_report(items.confidence, items.correct),
        baseline=(
            calibration_report(items.baseline_confidence, items.correct)
            if items.baseline_confidence is not None
            else None
        ),
        cascade=cascade,
        guard=guard,
        cascade_summary=summarize_cascade(sweep, cascade),
        aurc=area_under_risk_coverage(guard),
        policy=(
            PolicyPoint(policy, sweep.point(policy.return_at, policy.escalate_at))
            if policy is not None
            else None
        ),
        confidence_kind=confidence_kind,
        source=source,
        notes=all_notes,
    )


def write_metrics(evaluation: Evaluation, out_dir: Path) -> Path:
    path = out_dir / METRICS_FILE
    path.write_text(
        json.dumps(_finite(evaluation.as_dict()), indent=2, allow_nan=False) + "\n",
        encoding="utf-8",
    )
    return path


def _finite(value: Any) -> Any:
    """JSON has no NaN or infinity: such figures are written as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value
