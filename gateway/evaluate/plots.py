"""The pictures: reliability diagram, cascade curve, risk-coverage curve, as PNG files.

Figures are built on matplotlib's object API with the Agg canvas (no pyplot, no global state, no
display needed), so they can be drawn from any thread or process.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gateway.evaluate.evaluation import Evaluation
from gateway.evaluate.metrics import CalibrationReport
from gateway.evaluate.sweep import OperatingPoint

RELIABILITY = "reliability.png"
RELIABILITY_BASELINE = "reliability_baseline.png"
CASCADE = "cascade.png"
RISK_COVERAGE = "risk_coverage.png"

_LABEL_LIMIT = 15
"""Label each point with its threshold when a curve has at most this many points."""


def _figure() -> tuple[Any, Any]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.4, 4.8), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    return figure, figure.add_subplot()


def _save(figure: Any, path: Path) -> Path:
    figure.savefig(path, format="png")
    return path


def reliability_diagram(report: CalibrationReport, path: Path, label: str) -> Path:
    """Accuracy per confidence bin (bars, with counts), mean confidence, the diagonal, ECE."""
    figure, axes = _figure()
    filled = [row for row in report.reliability if row.count]
    width = filled[0].upper - filled[0].lower if filled else 0.1
    centers = [(row.lower + row.upper) / 2 for row in filled]
    accuracies = [row.accuracy or 0.0 for row in filled]
    bars = axes.bar(
        centers,
        accuracies,
        width=width * 0.9,
        color="#4c72b0",
        edgecolor="#1f3b63",
        label="accuracy in bin",
    )
    axes.scatter(
        [row.mean_confidence for row in filled],
        [row.mean_confidence for row in filled],
        color="#dd8452",
        zorder=3,
        label="mean confidence in bin",
    )
    for bar, row in zip(bars, filled, strict=True):
        axes.annotate(
            f"n={row.count}",
            (bar.get_x() + bar.get_width() / 2, bar.get_height()),
            xytext=(0, 3),
            textcoords="offset points",
            ha="center",
            fontsize=8,
        )
    axes.plot([0, 1], [0, 1], linestyle="--", color="gray", label="perfect calibration")
    axes.set_xlim(0, 1)
    axes.set_ylim(0, 1.08)
    axes.set_xlabel(f"{label} (bins of width {width:g})")
    axes.set_ylabel("fraction of answers that are correct")
    axes.set_title(f"Reliability: {label}, ECE = {report.ece:.3f} (n = {report.n})")
    axes.legend(loc="upper left", fontsize=8)
    return _save(figure, path)


def _label_thresholds(
    axes: Any, points: list[OperatingPoint], xs: list[float], ys: list[float]
) -> None:
    if len(points) > _LABEL_LIMIT:
        return
    for point, x, y in zip(points, xs, ys, strict=True):
        axes.annotate(
            f"{point.return_at:g}", (x, y), xytext=(3, -10), textcoords="offset points", fontsize=7
        )


def cascade_plot(evaluation: Evaluation, path: Path) -> Path:
    """Accuracy against the fraction escalated, for every threshold."""
    figure, axes = _figure()
    curve = evaluation.cascade
    rates = [p.escalation_rate for p in curve]
    returned = [
        (p.escalation_rate, p.returned_accuracy) for p in curve if p.returned_accuracy is not None
    ]
    axes.plot(
        [r for r, _ in returned],
        [a for _, a in returned],
        marker=".",
        color="#4c72b0",
        label="accuracy of the answers returned locally",
    )
    summary = evaluation.cascade_summary
    title = "Cascade: escalate when confidence < threshold"
    if summary.large_accuracy is not None:
        overall = [p.overall_accuracy or 0.0 for p in curve]
        axes.plot(rates, overall, marker="o", color="#dd8452", label="accuracy of the cascade")
        _label_thresholds(axes, curve, rates, overall)
        axes.plot(
            [0, 1],
            [summary.local_accuracy, summary.large_accuracy],
            linestyle=":",
            color="gray",
            label="escalating at random",
        )
        axes.axhline(
            summary.large_accuracy, color="#55a868", linewidth=1, label="large model alone"
        )
        if summary.apgr is not None:
            title += f"\nAPGR = {summary.apgr:.3f}"
    axes.axhline(summary.local_accuracy, color="#c44e52", linewidth=1, label="local model alone")
    if evaluation.policy is not None:
        point = evaluation.policy.point
        label = f"policy {evaluation.policy.policy.name}"
        _mark_policy(axes, point.escalation_rate, point.overall_accuracy, label)
    axes.set_xlim(-0.02, 1.02)
    axes.set_ylim(0, 1.02)
    axes.set_xlabel("fraction escalated to the large model")
    axes.set_ylabel("accuracy")
    axes.set_title(title)
    axes.legend(loc="lower right", fontsize=8)
    return _save(figure, path)


def risk_coverage_plot(evaluation: Evaluation, path: Path) -> Path:
    """Error rate of the returned answers against the fraction returned (the guard)."""
    figure, axes = _figure()
    curve = sorted((p for p in evaluation.guard if p.risk is not None), key=lambda p: p.coverage)
    coverage = [p.coverage for p in curve]
    risk = [p.risk or 0.0 for p in curve]
    axes.plot(coverage, risk, marker="o", color="#4c72b0", label="returned answers")
    _label_thresholds(axes, curve, coverage, risk)
    overall_error = 1.0 - evaluation.calibration.accuracy
    axes.axhline(overall_error, color="gray", linestyle=":", label="withholding nothing")
    if evaluation.policy is not None:
        point = evaluation.policy.point
        label = f"policy {evaluation.policy.policy.name} (returned)"
        _mark_policy(axes, point.coverage, point.risk, label)
    axes.set_xlim(0, 1.02)
    axes.set_ylim(0, 1.02)
    axes.set_xlabel("coverage: fraction of answers returned")
    axes.set_ylabel("risk: error rate of returned answers")
    axes.set_title(f"Guard: risk against coverage, AURC = {evaluation.aurc:.3f}")
    axes.legend(loc="upper left", fontsize=8)
    return _save(figure, path)


def _mark_policy(axes: Any, x: float, y: float | None, label: str) -> None:
    """The policy's operating point: a black star (none where `y` was not measured)."""
    if y is None:
        return
    axes.scatter([x], [y], marker="*", s=160, color="black", zorder=4, label=label)


def draw_all(evaluation: Evaluation, out_dir: Path) -> dict[str, Path]:
    """Every picture of an evaluation, by name."""
    label = f"{evaluation.confidence_kind} confidence"
    pictures = {
        "reliability": reliability_diagram(evaluation.calibration, out_dir / RELIABILITY, label),
        "cascade": cascade_plot(evaluation, out_dir / CASCADE),
        "risk_coverage": risk_coverage_plot(evaluation, out_dir / RISK_COVERAGE),
    }
    if evaluation.baseline is not None:
        pictures["reliability_baseline"] = reliability_diagram(
            evaluation.baseline, out_dir / RELIABILITY_BASELINE, "baseline confidence"
        )
    return pictures
