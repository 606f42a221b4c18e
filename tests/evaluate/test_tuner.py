"""Thresholds from data: the tuner meets its target and finds the known answer."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from gateway.errors import InvalidRequest
from gateway.evaluate.scores import ScoredItems
from gateway.evaluate.sweep import Sweep, candidate_thresholds
from gateway.evaluate.tuner import Target, parse_targets, tune
from tests.evaluate.synthetic import calibrated_levels, random_items


def test_returned_accuracy_target_returns_the_three_top_levels() -> None:
    # Returning levels >= 0.75 gives (0.75 + 0.85 + 0.95) / 3 = 0.85; adding 0.65 gives 0.80.
    result = tune(Sweep(calibrated_levels()), parse_targets(["returned_accuracy>=0.82"]))
    best = result.best
    assert best is not None
    assert best.return_at == 0.7
    assert best.returned_rate == pytest.approx(0.3)
    assert best.returned_accuracy == pytest.approx(0.85)
    # The rest goes to the large model (always right here), nothing is withheld.
    assert best.escalate_at == 0.0
    assert best.withheld_rate == 0.0


def test_guard_target_withholds_instead_of_escalating() -> None:
    targets = parse_targets(["returned_accuracy>=0.82, escalation_rate<=0"])
    best = tune(Sweep(calibrated_levels()), targets).best
    assert best is not None
    assert (best.return_at, best.escalate_at) == (0.7, 0.7)
    assert best.withheld_rate == pytest.approx(0.7)


def test_escalation_budget_escalates_the_least_confident() -> None:
    best = tune(Sweep(calibrated_levels()), parse_targets(["escalation_rate<=0.3"])).best
    assert best is not None
    assert (best.return_at, best.escalate_at) == (0.3, 0.0)
    # Right: 35 + 45 + ... + 95 = 455 returned, plus the 300 escalated.
    assert best.overall_accuracy == pytest.approx(0.755)


def test_relative_cost_budget_counts_the_local_cost() -> None:
    items = calibrated_levels(costs=(0.05, 1.0))
    best = tune(Sweep(items), parse_targets(["relative_cost<=0.25"])).best
    assert best is not None
    # 0.05 for every local answer leaves 0.2 for escalations: the two lowest levels.
    assert best.return_at == 0.2
    assert best.relative_cost == pytest.approx(0.25)


def test_an_impossible_target_finds_nothing() -> None:
    result = tune(Sweep(calibrated_levels()), parse_targets(["returned_accuracy>=0.99"]))
    assert result.best is None
    assert result.feasible == 0


@pytest.mark.parametrize("seed", range(4))
def test_tuner_choice_meets_the_target_and_no_pair_returns_more(seed: int) -> None:
    items = random_items(seed)
    target_accuracy = 0.75
    result = tune(Sweep(items), [Target("returned_accuracy", ">=", target_accuracy)])
    best = result.best
    assert best is not None
    # Measured directly on the items, without the sweep's prefix sums.
    returned = items.confidence >= best.return_at
    assert items.correct[returned].mean() >= target_accuracy
    assert returned.mean() == pytest.approx(best.returned_rate)
    # Brute force over every threshold: none meeting the target returns more.
    best_coverage = 0.0
    for t in candidate_thresholds(items.confidence):
        kept = items.confidence >= t
        if kept.any() and items.correct[kept].mean() >= target_accuracy:
            best_coverage = max(best_coverage, float(kept.mean()))
    assert best.returned_rate == pytest.approx(best_coverage)


def test_tuner_figures_match_a_direct_count_for_every_pair() -> None:
    items = random_items(11, n=60)
    sweep = Sweep(items)
    thresholds = candidate_thresholds(items.confidence)
    assert items.escalated_correct is not None
    for high, low in itertools.combinations_with_replacement(thresholds[::-1], 2):
        point = sweep.point(float(high), float(low))
        returned = items.confidence >= high
        escalated = (items.confidence >= low) & ~returned
        right = items.correct[returned].sum() + items.escalated_correct[escalated].sum()
        assert point.overall_accuracy == pytest.approx(right / items.n)
        cost = items.local_costs.sum() + items.large_costs[escalated].sum()
        assert point.relative_cost == pytest.approx(cost / items.large_costs.sum())


def test_overall_accuracy_target_needs_escalated_correct() -> None:
    items = ScoredItems(confidence=np.array([0.2, 0.8]), correct=np.array([False, True]))
    with pytest.raises(InvalidRequest, match="escalated_correct"):
        tune(Sweep(items), parse_targets(["overall_accuracy>=0.5"]))


def test_targets_parse_joined_and_in_percent() -> None:
    targets = parse_targets(["returned_accuracy>=90%, escalation_rate<=0.2", "relative_cost<0.5"])
    assert [(t.metric, t.op) for t in targets] == [
        ("returned_accuracy", ">="),
        ("escalation_rate", "<="),
        ("relative_cost", "<"),
    ]
    assert math.isclose(targets[0].value, 0.9)


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("returned_accuracy=>0.9", "bad target 'returned_accuracy=>0.9'"),
        ("accuracy>=0.9", "unknown metric 'accuracy'"),
        ("returned_accuracy>=1.5", "within"),
        ("", "no target"),
    ],
)
def test_bad_targets_are_refused_with_the_expression(expression: str, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        parse_targets([expression])
