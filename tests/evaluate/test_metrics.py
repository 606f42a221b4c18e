"""Calibration metrics: hand-computed cases, and scikit-learn as the independent reference."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.calibration import calibration_curve
from sklearn.metrics import brier_score_loss, roc_auc_score

from gateway.evaluate.metrics import (
    auroc,
    brier_score,
    calibration_report,
    expected_calibration_error,
    reliability_table,
    sharpness,
)

DIGITS = np.array([0.1 * d + 0.05 for d in range(10)])

# Two answers at 0.95 (one right), two at 0.25 (both wrong).
HAND_CONFIDENCE = [0.95, 0.95, 0.25, 0.25]
HAND_CORRECT = [True, False, False, False]


def test_ece_of_a_hand_computed_case() -> None:
    # bin 9: |0.5 - 0.95| = 0.45 with half the items; bin 2: |0 - 0.25| = 0.25 with half.
    assert expected_calibration_error(HAND_CONFIDENCE, HAND_CORRECT) == pytest.approx(0.35)


def test_brier_of_a_hand_computed_case() -> None:
    expected = (0.05**2 + 0.95**2 + 0.25**2 + 0.25**2) / 4
    assert brier_score(HAND_CONFIDENCE, HAND_CORRECT) == pytest.approx(expected)


def test_auroc_counts_ties_as_one_half() -> None:
    # The right answer (0.95) beats the two 0.25s and ties the wrong 0.95: (1 + 1 + 0.5) / 3.
    assert auroc(HAND_CONFIDENCE, HAND_CORRECT) == pytest.approx(2.5 / 3)


def test_sharpness_is_the_standard_deviation_of_confidence() -> None:
    assert sharpness(HAND_CONFIDENCE) == pytest.approx(0.35)
    assert sharpness([0.55] * 7) == pytest.approx(0.0, abs=1e-12)


def test_perfectly_calibrated_digits_have_zero_ece() -> None:
    confidence: list[float] = []
    correct: list[bool] = []
    for d, c in enumerate(DIGITS):
        confidence += [float(c)] * 20
        right = 2 * d + 1  # 0.05 * 20 = 1, 0.15 * 20 = 3, ...
        correct += [True] * right + [False] * (20 - right)
    assert expected_calibration_error(confidence, correct) == pytest.approx(0.0, abs=1e-12)


def test_each_digit_confidence_has_its_own_bin_of_ten() -> None:
    rows = reliability_table(DIGITS, [True] * 10, n_bins=10)
    assert [row.count for row in rows] == [1] * 10
    for row, value in zip(rows, DIGITS, strict=True):
        assert row.mean_confidence == pytest.approx(value)
        assert row.lower < value < row.upper


def test_a_confidence_of_one_falls_in_the_last_bin() -> None:
    rows = reliability_table([1.0, 0.0], [True, False], n_bins=10)
    assert rows[-1].count == 1
    assert rows[0].count == 1


def test_auroc_is_undefined_when_every_answer_is_right() -> None:
    assert auroc([0.2, 0.9], [True, True]) is None


@pytest.mark.parametrize("confidence", [[1.2, 0.5], [float("nan"), 0.5], [-0.1, 0.5]])
def test_confidences_outside_zero_one_are_refused(confidence: list[float]) -> None:
    with pytest.raises(ValueError, match=r"within \[0, 1\]"):
        brier_score(confidence, [True, False])


def _sklearn_ece(confidence: np.ndarray, correct: np.ndarray, n_bins: int) -> float:
    prob_true, prob_pred = calibration_curve(correct, confidence, n_bins=n_bins, strategy="uniform")
    counts, _ = np.histogram(confidence, bins=np.linspace(0.0, 1.0, n_bins + 1))
    weights = counts[counts > 0] / confidence.size
    return float(np.sum(weights * np.abs(prob_true - prob_pred)))


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("kind", ["continuous", "digits"])
def test_metrics_agree_with_scikit_learn_on_random_data(seed: int, kind: str) -> None:
    rng = np.random.default_rng(seed)
    n = 500
    digits = kind == "digits"
    confidence = rng.choice(DIGITS, size=n) if digits else rng.beta(2.0, 1.5, size=n)
    # Roughly calibrated but with noise, so that every figure is away from its extreme.
    correct = rng.random(n) < np.clip(confidence + rng.normal(0, 0.15, n), 0, 1)
    report = calibration_report(confidence, correct)
    assert report.brier == pytest.approx(brier_score_loss(correct, confidence))
    assert report.auroc == pytest.approx(roc_auc_score(correct, confidence))
    assert report.ece == pytest.approx(_sklearn_ece(confidence, correct, 10))
    assert report.ece_15 == pytest.approx(_sklearn_ece(confidence, correct, 15))
    assert report.accuracy == pytest.approx(correct.mean())
    assert report.sharpness == pytest.approx(np.std(confidence))
    assert sum(row.count for row in report.reliability) == n
