"""Synthetic scored data with known answers, shared by the evaluation tests."""

from __future__ import annotations

import numpy as np

from gateway.evaluate.scores import ScoredItems

DIGITS = [round(0.1 * d + 0.05, 2) for d in range(10)]


def calibrated_levels(
    per_level: int = 100,
    *,
    large_always_right: bool = True,
    costs: tuple[float, float] | None = None,
) -> ScoredItems:
    """`per_level` items at each digit confidence, exactly that fraction of them right.

    At confidence 0.05 + 0.1 d, (0.05 + 0.1 d) * per_level answers are right (per_level = 100:
    5, 15, ..., 95). The large model gets everything right, or the same ones wrong when not.
    """
    confidence: list[float] = []
    correct: list[bool] = []
    for value in DIGITS:
        right = round(value * per_level)
        confidence += [value] * per_level
        correct += [True] * right + [False] * (per_level - right)
    conf = np.array(confidence)
    right_array = np.array(correct)
    escalated = np.ones(conf.size, dtype=np.bool_) if large_always_right else right_array.copy()
    local_cost = np.full(conf.size, costs[0]) if costs else None
    large_cost = np.full(conf.size, costs[1]) if costs else None
    return ScoredItems(
        confidence=conf,
        correct=right_array,
        escalated_correct=escalated,
        cost_local=local_cost,
        cost_large=large_cost,
    )


def random_items(seed: int, n: int = 300) -> ScoredItems:
    rng = np.random.default_rng(seed)
    confidence = rng.beta(2.0, 2.0, size=n)
    return ScoredItems(
        confidence=confidence,
        correct=rng.random(n) < confidence,
        escalated_correct=rng.random(n) < 0.9,
        cost_local=rng.uniform(0.0, 0.2, size=n),
        cost_large=rng.uniform(0.5, 2.0, size=n),
    )
