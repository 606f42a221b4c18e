"""Cascade and guard curves: monotone where they must be, and hand-computed summaries."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from gateway.evaluate.curves import (
    area_under_risk_coverage,
    cascade_curve,
    guard_curve,
    summarize_cascade,
)
from gateway.evaluate.scores import ScoredItems
from gateway.evaluate.sweep import Sweep, candidate_thresholds
from tests.evaluate.synthetic import random_items

# Four answers: the two confident ones right, the two doubtful ones wrong; the large model
# gets all four right.
SMALL = ScoredItems(
    confidence=np.array([0.9, 0.7, 0.3, 0.1]),
    correct=np.array([True, True, False, False]),
    escalated_correct=np.array([True, True, True, True]),
)


def _non_increasing(values: list[float]) -> bool:
    return all(a >= b - 1e-12 for a, b in itertools.pairwise(values))


def _non_decreasing(values: list[float]) -> bool:
    return all(a <= b + 1e-12 for a, b in itertools.pairwise(values))


@pytest.mark.parametrize("seed", range(3))
def test_cascade_curve_escalates_and_costs_more_as_the_threshold_rises(seed: int) -> None:
    curve = cascade_curve(Sweep(random_items(seed)))
    assert _non_decreasing([p.return_at for p in curve])
    assert _non_increasing([p.returned_rate for p in curve])
    assert _non_decreasing([p.escalation_rate for p in curve])
    assert _non_decreasing([p.relative_cost or 0.0 for p in curve])
    assert all(p.withheld_rate == 0.0 for p in curve)
    for p in curve:
        assert p.returned_rate + p.escalation_rate + p.withheld_rate == pytest.approx(1.0)


@pytest.mark.parametrize("seed", range(3))
def test_guard_curve_withholds_more_as_the_threshold_rises(seed: int) -> None:
    curve = guard_curve(Sweep(random_items(seed)))
    assert _non_increasing([p.coverage for p in curve])
    assert _non_decreasing([p.withheld_rate for p in curve])
    assert all(p.escalation_rate == 0.0 for p in curve)


def test_cascade_curve_runs_from_the_local_model_to_the_large_one() -> None:
    items = random_items(7)
    curve = cascade_curve(Sweep(items))
    first, last = curve[0], curve[-1]
    assert first.escalation_rate == 0.0
    assert first.overall_accuracy == pytest.approx(items.correct.mean())
    assert first.relative_cost == pytest.approx(items.local_costs.sum() / items.large_costs.sum())
    assert last.escalation_rate == 1.0
    assert last.returned_accuracy is None
    assert last.overall_accuracy == pytest.approx(np.mean(items.escalated_correct))


def test_every_distinct_split_is_one_threshold() -> None:
    thresholds = candidate_thresholds(np.array([0.05, 0.05, 0.15, 0.95]))
    assert thresholds.tolist() == [0.0, 0.1, 0.5, 1.0]


def test_apgr_and_gap_recovery_of_a_hand_computed_case() -> None:
    sweep = Sweep(SMALL)
    curve = cascade_curve(sweep)
    assert [p.escalation_rate for p in curve] == [0.0, 0.25, 0.5, 0.75, 1.0]
    summary = summarize_cascade(sweep, curve)
    # PGR: 0, 0.5, 1, 1, 1 at those rates; trapezoids: 0.0625 + 0.1875 + 0.25 + 0.25.
    assert summary.apgr == pytest.approx(0.75)
    assert summary.escalation_for_gap == {"50pct": 0.25, "80pct": 0.5}
    assert summary.local_accuracy == 0.5
    assert summary.large_accuracy == 1.0


def test_random_confidence_recovers_about_half_the_gap() -> None:
    rng = np.random.default_rng(3)
    n = 20_000
    items = ScoredItems(
        confidence=rng.random(n),
        correct=rng.random(n) < 0.5,
        escalated_correct=rng.random(n) < 0.9,
    )
    sweep = Sweep(items)
    summary = summarize_cascade(sweep, cascade_curve(sweep))
    assert summary.apgr == pytest.approx(0.5, abs=0.03)


def test_no_gap_means_no_apgr() -> None:
    items = ScoredItems(
        confidence=SMALL.confidence,
        correct=SMALL.correct,
        escalated_correct=np.array([False, False, False, False]),
    )
    sweep = Sweep(items)
    summary = summarize_cascade(sweep, cascade_curve(sweep))
    assert summary.apgr is None
    assert summary.escalation_for_gap == {"50pct": None, "80pct": None}


def test_aurc_of_a_hand_computed_case() -> None:
    # Coverage 1: risk 1/2; 3/4: risk 1/3; 1/2 and 1/4: risk 0.
    assert area_under_risk_coverage(guard_curve(Sweep(SMALL))) == pytest.approx(
        0.25 * 0.5 + 0.25 / 3
    )


def test_a_policy_point_returns_escalates_and_withholds() -> None:
    point = Sweep(SMALL).point(return_at=0.5, escalate_at=0.2)
    assert (point.returned_rate, point.escalation_rate, point.withheld_rate) == (0.5, 0.25, 0.25)
    assert point.returned_accuracy == 1.0
    assert point.risk == 0.0
    assert point.overall_accuracy == 0.75
    assert point.answered_accuracy == 1.0
    assert point.relative_cost == 0.25


def test_without_escalated_correct_the_cascade_accuracy_is_unknown() -> None:
    items = ScoredItems(confidence=SMALL.confidence, correct=SMALL.correct)
    point = Sweep(items).point(return_at=0.5, escalate_at=0.0)
    assert point.overall_accuracy is None
    assert point.returned_accuracy == 1.0
    guard_point = Sweep(items).point(return_at=0.5, escalate_at=0.5)
    assert guard_point.overall_accuracy == 0.5
