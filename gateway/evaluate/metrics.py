"""Calibration metrics of a confidence for correctness: ECE, Brier, AUROC, sharpness.

`confidence` is an array of floats in [0, 1] (the stated probability that an answer is right) and
`correct` an array of booleans (whether it was). Everything is plain numpy and pure.

Bins are equal-width on [0, 1]: bin k holds confidences in [k/n, (k+1)/n), the last bin also holds
1.0. With 10 bins each of the adapter's ten confidence values (0.05, 0.15, ..., 0.95) sits in the
middle of its own bin, so the 10-bin ECE is the exact per-value calibration gap.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]

SHARPNESS_DEFINITION = (
    "standard deviation of the confidence values over all items (population, ddof=0): "
    "0 when every answer gets the same confidence, 0.5 at most; higher is more decisive"
)


def as_arrays(confidence: Any, correct: Any) -> tuple[FloatArray, BoolArray]:
    """Validate and convert: equal non-zero lengths, finite confidences within [0, 1]."""
    conf = np.asarray(confidence, dtype=np.float64).reshape(-1)
    right = np.asarray(correct, dtype=np.bool_).reshape(-1)
    if conf.shape != right.shape:
        raise ValueError(f"{conf.size} confidences but {right.size} correctness labels")
    if conf.size == 0:
        raise ValueError("no items to evaluate")
    if not np.all(np.isfinite(conf)) or conf.min() < 0.0 or conf.max() > 1.0:
        raise ValueError("confidences must be finite numbers within [0, 1]")
    return conf, right


def bin_indices(confidence: FloatArray, n_bins: int) -> npt.NDArray[np.intp]:
    """Bin k for [k/n, (k+1)/n); 1.0 goes to the last bin."""
    if n_bins < 1:
        raise ValueError("n_bins must be at least 1")
    indices = np.floor(confidence * n_bins).astype(np.intp)
    return np.clip(indices, 0, n_bins - 1)


@dataclass(frozen=True)
class ReliabilityBin:
    """One row of a reliability table; `None` figures mean the bin is empty."""

    lower: float
    upper: float
    count: int
    mean_confidence: float | None
    accuracy: float | None

    @property
    def gap(self) -> float | None:
        if self.mean_confidence is None or self.accuracy is None:
            return None
        return self.accuracy - self.mean_confidence

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "gap": self.gap}


def reliability_table(confidence: Any, correct: Any, n_bins: int = 10) -> list[ReliabilityBin]:
    conf, right = as_arrays(confidence, correct)
    indices = bin_indices(conf, n_bins)
    counts = np.bincount(indices, minlength=n_bins)
    conf_sums = np.bincount(indices, weights=conf, minlength=n_bins)
    right_sums = np.bincount(indices, weights=right.astype(np.float64), minlength=n_bins)
    rows: list[ReliabilityBin] = []
    for k in range(n_bins):
        count = int(counts[k])
        rows.append(
            ReliabilityBin(
                lower=k / n_bins,
                upper=(k + 1) / n_bins,
                count=count,
                mean_confidence=float(conf_sums[k] / count) if count else None,
                accuracy=float(right_sums[k] / count) if count else None,
            )
        )
    return rows


def expected_calibration_error(confidence: Any, correct: Any, n_bins: int = 10) -> float:
    """Sum over bins of (bin share of items) * |accuracy - mean confidence|."""
    conf, _ = as_arrays(confidence, correct)
    total = conf.size
    return float(
        sum(
            row.count / total * abs(row.gap)
            for row in reliability_table(confidence, correct, n_bins)
            if row.gap is not None
        )
    )


def brier_score(confidence: Any, correct: Any) -> float:
    """Mean squared difference between the confidence and the 0/1 outcome."""
    conf, right = as_arrays(confidence, correct)
    return float(np.mean((conf - right.astype(np.float64)) ** 2))


def auroc(confidence: Any, correct: Any) -> float | None:
    """Probability that a random right answer has higher confidence than a random wrong one.

    Ties count one half (Mann-Whitney U with average ranks). `None` when every answer is right or
    every answer is wrong: the figure is undefined then.
    """
    conf, right = as_arrays(confidence, correct)
    n_pos = int(right.sum())
    n_neg = right.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = _average_ranks(conf)
    u = float(ranks[right].sum()) - n_pos * (n_pos + 1) / 2.0
    return u / (n_pos * n_neg)


def _average_ranks(values: FloatArray) -> FloatArray:
    """1-based ranks, tied values sharing the mean of their ranks."""
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    # Start of each run of equal values, and each run's mean rank.
    starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
    ends = np.r_[starts[1:], values.size]
    mean_rank = (starts + ends + 1) / 2.0
    ranks = np.empty(values.size, dtype=np.float64)
    ranks[order] = np.repeat(mean_rank, ends - starts)
    return ranks


def sharpness(confidence: Any) -> float:
    """See `SHARPNESS_DEFINITION`."""
    conf = np.asarray(confidence, dtype=np.float64).reshape(-1)
    if conf.size == 0:
        raise ValueError("no items to evaluate")
    return float(np.std(conf))


@dataclass(frozen=True)
class CalibrationReport:
    """Every calibration figure of one confidence signal."""

    n: int
    accuracy: float
    mean_confidence: float
    ece: float
    ece_15: float
    brier: float
    auroc: float | None
    sharpness: float
    reliability: list[ReliabilityBin]

    def as_dict(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "accuracy": self.accuracy,
            "mean_confidence": self.mean_confidence,
            "ece": self.ece,
            "ece_15": self.ece_15,
            "brier": self.brier,
            "auroc": self.auroc,
            "sharpness": self.sharpness,
            "reliability": [row.as_dict() for row in self.reliability],
        }


def calibration_report(confidence: Any, correct: Any) -> CalibrationReport:
    conf, right = as_arrays(confidence, correct)
    return CalibrationReport(
        n=int(conf.size),
        accuracy=float(right.mean()),
        mean_confidence=float(conf.mean()),
        ece=expected_calibration_error(conf, right, 10),
        ece_15=expected_calibration_error(conf, right, 15),
        brier=brier_score(conf, right),
        auroc=auroc(conf, right),
        sharpness=sharpness(conf),
        reliability=reliability_table(conf, right, 10),
    )
