"""Choosing a policy's thresholds from data: targets, the search, and the choice.

A target is `METRIC OP NUMBER` (OP one of >=, <=, >, <), several joined by `,` or `and`:
`returned_accuracy>=0.9`, `escalation_rate<=0.2, relative_cost<=0.3`. Every pair of candidate
thresholds (`escalate_at <= return_at`) is measured and the pairs that meet every target are kept.

Among those, the objective picks one:
- `coverage`: return as many local answers as possible (then withhold as few as possible);
- `overall_accuracy`: as many right answers overall as possible (withheld ones count as wrong);
  without `escalated_correct` in the data, escalated answers are assumed right (a stated proxy);
- `relative_cost`: as cheap as possible.
`auto` is `coverage` when a target bounds quality (an accuracy floor or a risk ceiling) and
`overall_accuracy` otherwise (a budget: escalation rate, cost, withheld rate).
Remaining ties go to more right answers overall, fewer withheld, lower cost, higher thresholds.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from gateway.errors import InvalidRequest
from gateway.evaluate.metrics import FloatArray
from gateway.evaluate.sweep import OperatingPoint, Sweep, candidate_thresholds

METRICS = (
    "returned_accuracy",
    "risk",
    "coverage",
    "returned_rate",
    "escalation_rate",
    "withheld_rate",
    "answered_accuracy",
    "overall_accuracy",
    "relative_cost",
)
NEEDS_ESCALATION = ("answered_accuracy", "overall_accuracy")
QUALITY = ("returned_accuracy", "risk", "answered_accuracy", "overall_accuracy")

Objective = Literal["auto", "coverage", "overall_accuracy", "relative_cost"]
OBJECTIVES: tuple[Objective, ...] = ("auto", "coverage", "overall_accuracy", "relative_cost")

_COMPARISONS: dict[str, Callable[[FloatArray, float], np.ndarray]] = {
    ">=": operator.ge,
    "<=": operator.le,
    ">": operator.gt,
    "<": operator.lt,
}
_TERM = re.compile(r"^\s*([a-z_]+)\s*(>=|<=|>|<)\s*([0-9]*\.?[0-9]+(?:e-?[0-9]+)?)\s*(%?)\s*$")


@dataclass(frozen=True)
class Target:
    metric: str
    op: str
    value: float

    def __str__(self) -> str:
        return f"{self.metric}{self.op}{self.value:g}"

    @property
    def bounds_quality(self) -> bool:
        return self.metric in QUALITY


def parse_targets(expressions: Sequence[str]) -> list[Target]:
    """Parse target expressions; a bad one raises `InvalidRequest` quoting it."""
    targets: list[Target] = []
    for expression in expressions:
        for term in re.split(r",|\band\b", expression):
            if not term.strip():
                continue
            match = _TERM.match(term)
            if match is None:
                raise InvalidRequest(
                    f"bad target {term.strip()!r}: write METRIC>=NUMBER or METRIC<=NUMBER, "
                    f"METRIC one of {', '.join(METRICS)}",
                    param="target",
                )
            metric, op, number, percent = match.groups()
            if metric not in METRICS:
                raise InvalidRequest(
                    f"bad target {term.strip()!r}: unknown metric {metric!r}; "
                    f"use one of {', '.join(METRICS)}",
                    param="target",
                )
            value = float(number) / (100.0 if percent else 1.0)
            if not 0.0 <= value <= (1.0 if metric != "relative_cost" else float("inf")):
                raise InvalidRequest(
                    f"bad target {term.strip()!r}: {metric} is a fraction within [0, 1]",
                    param="target",
                )
            targets.append(Target(metric=metric, op=op, value=value))
    if not targets:
        raise InvalidRequest("no target given", param="target")
    return targets


@dataclass(frozen=True)
class TuneResult:
    targets: list[Target]
    objective: Objective
    best: OperatingPoint | None
    alternatives: list[OperatingPoint]
    feasible: int
    searched: int
    proxy: bool
    """True when escalated answers were assumed right (no `escalated_correct` in the data)."""


def tune(
    sweep: Sweep, targets: Sequence[Target], objective: Objective = "auto", top: int = 5
) -> TuneResult:
    """Measure every candidate threshold pair and pick the best that meets all targets."""
    for target in targets:
        if target.metric in NEEDS_ESCALATION and not sweep.knows_escalation:
            raise InvalidRequest(
                f"the target {target} needs 'escalated_correct' on every line of the scores",
                param="target",
            )
    if objective == "auto":
        objective = "coverage" if any(t.bounds_quality for t in targets) else "overall_accuracy"
    thresholds = candidate_thresholds(sweep.items.confidence)
    counts = sweep.count_at_least(thresholds)
    size = thresholds.size
    # Row r is return_at = thresholds[r], column e is escalate_at = thresholds[e], e <= r.
    k_return = np.broadcast_to(counts[:, None], (size, size))
    k_answer = np.broadcast_to(counts[None, :], (size, size))
    figures = sweep.grid(k_return, k_answer)
    figures["coverage"] = figures["returned_rate"]
    allowed = np.tril(np.ones((size, size), dtype=np.bool_))
    meets = allowed.copy()
    for target in targets:
        with np.errstate(invalid="ignore"):
            meets &= _COMPARISONS[target.op](figures[target.metric], target.value)
    proxy = not sweep.knows_escalation
    # Right answers per item; the proxy counts every escalated answer as right.
    right_answers = (
        figures["overall_accuracy"]
        if not proxy
        else np.nan_to_num(figures["returned_accuracy"]) * figures["returned_rate"]
        + figures["escalation_rate"]
    )
    cost = np.nan_to_num(figures["relative_cost"], nan=0.0)
    keys = {
        "coverage": figures["returned_rate"],
        "overall_accuracy": right_answers,
        "relative_cost": -cost,
    }
    # np.lexsort sorts by the last key first; every key is negated so that larger is better.
    rows, cols = np.nonzero(meets)
    order = np.lexsort(
        (
            -thresholds[cols],
            -thresholds[rows],
            cost[rows, cols],
            figures["withheld_rate"][rows, cols],
            -np.nan_to_num(right_answers[rows, cols]),
            -np.nan_to_num(keys[objective][rows, cols]),
        )
    )
    # The best pair, then the best pair for each other return_at, in order.
    picked: list[int] = []
    seen: set[int] = set()
    for i in order:
        if int(rows[i]) not in seen:
            seen.add(int(rows[i]))
            picked.append(int(i))
            if len(picked) >= max(top, 1):
                break
    chosen = [sweep.point(float(thresholds[rows[i]]), float(thresholds[cols[i]])) for i in picked]
    return TuneResult(
        targets=list(targets),
        objective=objective,
        best=chosen[0] if chosen else None,
        alternatives=chosen[1:],
        feasible=int(rows.size),
        searched=int(allowed.sum()),
        proxy=proxy and objective == "overall_accuracy",
    )
