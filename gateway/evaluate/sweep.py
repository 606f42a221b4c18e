"""What a policy's two thresholds do to a set of scored items.

A policy returns the local answer when `confidence >= return_at`, escalates it when
`escalate_at <= confidence < return_at` and withholds it below `escalate_at`. `Sweep` sorts the
items once and answers, for any pair of thresholds, the fractions returned / escalated / withheld,
the accuracy of what is returned, the accuracy of the whole cascade and its relative cost, from
prefix sums (so a grid of every threshold pair is cheap).

Candidate thresholds sit between consecutive distinct confidence values (rounded to a short
decimal that splits the items the same way), plus 0 (return everything) and one above the largest
value (return nothing): every distinct way of splitting the items is one candidate.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from gateway.evaluate.metrics import FloatArray
from gateway.evaluate.scores import ScoredItems

IntArray = npt.NDArray[np.intp]

MAX_CANDIDATES = 400
"""Above this many distinct confidence values, candidates are spread over quantiles instead."""


@dataclass(frozen=True)
class OperatingPoint:
    """The measured effect of one (return_at, escalate_at) pair; `None` where undefined."""

    return_at: float
    escalate_at: float
    returned_rate: float
    escalation_rate: float
    withheld_rate: float
    returned_accuracy: float | None
    answered_accuracy: float | None
    overall_accuracy: float | None
    relative_cost: float | None

    @property
    def risk(self) -> float | None:
        """Error rate of the returned answers."""
        return None if self.returned_accuracy is None else 1.0 - self.returned_accuracy

    @property
    def coverage(self) -> float:
        return self.returned_rate

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "risk": self.risk, "coverage": self.coverage}


def _short_threshold(low: float, high: float) -> float:
    """A short decimal t with low < t <= high (the midpoint when none is short)."""
    middle = (low + high) / 2.0
    for digits in (1, 2, 3, 4, 6, 8):
        rounded = round(middle, digits)
        if low < rounded <= high:
            return rounded
    return middle if low < middle <= high else high


def candidate_thresholds(confidence: FloatArray, limit: int = MAX_CANDIDATES) -> FloatArray:
    """Ascending thresholds, one per distinct split of the items (at most about `limit`)."""
    values = np.unique(confidence)
    boundaries = np.arange(1, values.size)
    if boundaries.size > limit:
        ordered = np.sort(confidence)
        at = ordered[np.linspace(0, ordered.size - 1, limit).astype(np.intp)]
        picked = np.unique(np.searchsorted(values, at))
        boundaries = picked[(picked >= 1) & (picked < values.size)]
    inner = [_short_threshold(float(values[j - 1]), float(values[j])) for j in boundaries]
    top = float(values[-1])
    above = 1.0 if top < 1.0 else float(np.nextafter(top, np.inf))
    return np.array([0.0, *inner, above], dtype=np.float64)


class Sweep:
    """Scored items sorted by confidence, with prefix sums for any threshold pair."""

    def __init__(self, items: ScoredItems) -> None:
        self.items = items
        self.n = items.n
        order = np.argsort(-items.confidence, kind="mergesort")
        self._ascending = np.sort(items.confidence)
        self._correct = _prefix(items.correct[order])
        self._escalated = (
            _prefix(items.escalated_correct[order]) if items.escalated_correct is not None else None
        )
        self._large = _prefix(items.large_costs[order])
        self._total_local = float(items.local_costs.sum())
        self._total_large = float(items.large_costs.sum())

    @property
    def knows_escalation(self) -> bool:
        return self._escalated is not None

    def count_at_least(self, thresholds: Any) -> IntArray:
        """How many items have confidence >= each threshold."""
        found = np.searchsorted(self._ascending, np.asarray(thresholds), side="left")
        return np.asarray(self.n - found, dtype=np.intp)

    def grid(self, k_return: IntArray, k_answer: IntArray) -> dict[str, FloatArray]:
        """Figures for arrays of counts returned (`k_return`) and answered (`k_answer`).

        Broadcasts like numpy; an undefined figure is NaN.
        """
        n = float(self.n)
        k_r = np.asarray(k_return)
        k_e = np.asarray(k_answer)
        returned_right = self._correct[k_r]
        with np.errstate(invalid="ignore", divide="ignore"):
            returned_accuracy = np.where(k_r > 0, returned_right / np.maximum(k_r, 1), np.nan)
            if self._escalated is not None:
                escalated_right = self._escalated[k_e] - self._escalated[k_r]
            else:
                escalated_right = np.where(k_e > k_r, np.nan, 0.0)
            answered_right = returned_right + escalated_right
            answered_accuracy = np.where(k_e > 0, answered_right / np.maximum(k_e, 1), np.nan)
            overall_accuracy = answered_right / n
            escalated_cost = self._large[k_e] - self._large[k_r]
            relative_cost = (
                (self._total_local + escalated_cost) / self._total_large
                if self._total_large > 0
                else np.full(np.broadcast(k_r, k_e).shape, np.nan)
            )
        shape = np.broadcast(k_r, k_e).shape
        return {
            "returned_rate": np.broadcast_to(k_r / n, shape),
            "escalation_rate": np.broadcast_to((k_e - k_r) / n, shape),
            "withheld_rate": np.broadcast_to((n - k_e) / n, shape),
            "returned_accuracy": np.broadcast_to(returned_accuracy, shape),
            "risk": np.broadcast_to(1.0 - returned_accuracy, shape),
            "answered_accuracy": np.broadcast_to(answered_accuracy, shape),
            "overall_accuracy": np.broadcast_to(overall_accuracy, shape),
            "relative_cost": np.broadcast_to(relative_cost, shape),
        }

    def point(self, return_at: float, escalate_at: float) -> OperatingPoint:
        """The operating point of a policy; `escalate_at` above `return_at` escalates nothing."""
        escalate_at = min(escalate_at, return_at)
        k_r, k_e = self.count_at_least([return_at, escalate_at])
        figures = self.grid(np.asarray(k_r), np.asarray(k_e))
        return OperatingPoint(
            return_at=float(return_at),
            escalate_at=float(escalate_at),
            returned_rate=float(figures["returned_rate"]),
            escalation_rate=float(figures["escalation_rate"]),
            withheld_rate=float(figures["withheld_rate"]),
            returned_accuracy=_number(figures["returned_accuracy"]),
            answered_accuracy=_number(figures["answered_accuracy"]),
            overall_accuracy=_number(figures["overall_accuracy"]),
            relative_cost=_number(figures["relative_cost"]),
        )


def _prefix(values: npt.NDArray[Any]) -> FloatArray:
    """prefix[k] = sum of the first k values (prefix[0] = 0)."""
    return np.concatenate([[0.0], np.cumsum(values.astype(np.float64))])


def _number(value: Any) -> float | None:
    number = float(value)
    return None if np.isnan(number) else number
