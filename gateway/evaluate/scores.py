"""Scored items: what every metric, curve and tuner works on, and the SCORES.jsonl format.

One line per item: `confidence` (float in [0, 1]), `correct` (bool), and optionally
`escalated_correct` (bool: the large model got it right), `baseline_confidence` (float: another
signal to compare with, e.g. the base model's sequence probability) and
`cost: {"local": x, "large": y}` (what answering it costs each way, any unit; by default local 0
and large 1, so that relative cost equals the escalation rate). An optional field must be on every
line or on none.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gateway.errors import InvalidRequest
from gateway.evaluate.lines import Line, read_lines
from gateway.evaluate.metrics import BoolArray, FloatArray


@dataclass(frozen=True)
class ScoredItems:
    """Column arrays of equal length; optional columns are `None` when not known."""

    confidence: FloatArray
    correct: BoolArray
    escalated_correct: BoolArray | None = None
    baseline_confidence: FloatArray | None = None
    cost_local: FloatArray | None = None
    cost_large: FloatArray | None = None

    def __post_init__(self) -> None:
        n = self.confidence.size
        if n == 0:
            raise InvalidRequest("there are no scored items to evaluate")
        for name in ("correct", "escalated_correct", "baseline_confidence"):
            column = getattr(self, name)
            if column is not None and column.size != n:
                raise ValueError(f"column {name} has {column.size} entries, expected {n}")

    @property
    def n(self) -> int:
        return int(self.confidence.size)

    @property
    def local_costs(self) -> FloatArray:
        return self.cost_local if self.cost_local is not None else np.zeros(self.n)

    @property
    def large_costs(self) -> FloatArray:
        return self.cost_large if self.cost_large is not None else np.ones(self.n)

    @classmethod
    def from_records(cls, records: Sequence[ScoreRecord]) -> ScoredItems:
        if not records:
            raise InvalidRequest("there are no scored items to evaluate")
        escalated = [r.escalated_correct for r in records]
        baseline = [r.baseline_confidence for r in records]
        return cls(
            confidence=np.array([r.confidence for r in records], dtype=np.float64),
            correct=np.array([r.correct for r in records], dtype=np.bool_),
            escalated_correct=(
                np.array(escalated, dtype=np.bool_)
                if all(e is not None for e in escalated)
                else None
            ),
            baseline_confidence=(
                np.array(baseline, dtype=np.float64)
                if all(b is not None for b in baseline)
                else None
            ),
            cost_local=np.array([r.cost_local for r in records], dtype=np.float64),
            cost_large=np.array([r.cost_large for r in records], dtype=np.float64),
        )


@dataclass(frozen=True)
class ScoreRecord:
    """One line of SCORES.jsonl."""

    confidence: float
    correct: bool
    escalated_correct: bool | None = None
    baseline_confidence: float | None = None
    cost_local: float = 0.0
    cost_large: float = 1.0

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"confidence": self.confidence, "correct": self.correct}
        if self.escalated_correct is not None:
            out["escalated_correct"] = self.escalated_correct
        if self.baseline_confidence is not None:
            out["baseline_confidence"] = self.baseline_confidence
        out["cost"] = {"local": self.cost_local, "large": self.cost_large}
        return out


def record_from_line(line: Line) -> ScoreRecord:
    confidence = line.get_probability("confidence")
    if confidence is None:
        raise line.error("missing field 'confidence'", "confidence")
    correct = line.get_bool("correct")
    if correct is None:
        raise line.error("missing field 'correct'", "correct")
    cost_local, cost_large = line.costs()
    return ScoreRecord(
        confidence=confidence,
        correct=correct,
        escalated_correct=line.get_bool("escalated_correct"),
        baseline_confidence=line.get_probability("baseline_confidence"),
        cost_local=cost_local,
        cost_large=cost_large,
    )


def read_scores(path: Path) -> ScoredItems:
    """Read SCORES.jsonl; an optional field on some lines but not all is an error naming one."""
    lines = list(read_lines(path))
    records = [record_from_line(line) for line in lines]
    if not records:
        raise InvalidRequest(f"{path}: no scored lines")
    for field, values in (
        ("escalated_correct", [r.escalated_correct for r in records]),
        ("baseline_confidence", [r.baseline_confidence for r in records]),
    ):
        _all_or_none(lines, field, values)
    return ScoredItems.from_records(records)


def _all_or_none(lines: Sequence[Line], field: str, values: Sequence[object]) -> None:
    present = [v is not None for v in values]
    if any(present) and not all(present):
        missing = lines[present.index(False)]
        raise missing.error(f"'{field}' is given on other lines but missing here", field)


def write_scores(path: Path, records: Iterable[ScoreRecord]) -> None:
    with path.open("w", encoding="utf-8") as out:
        for record in records:
            out.write(json.dumps(record.as_dict()) + "\n")
