"""`report.html`: one self-contained page (pictures embedded as base64) with every table."""

from __future__ import annotations

import base64
from collections.abc import Callable, Mapping, Sequence
from html import escape
from pathlib import Path

from gateway.evaluate.evaluation import Evaluation
from gateway.evaluate.metrics import SHARPNESS_DEFINITION, CalibrationReport
from gateway.evaluate.sweep import OperatingPoint

REPORT = "report.html"
MAX_CURVE_ROWS = 25

_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 60rem; margin: 2rem auto; padding: 0 1rem;
       color: #222; }
table { border-collapse: collapse; margin: 0.5rem 0 1.5rem; font-size: 0.9rem; }
th, td { border: 1px solid #ccc; padding: 0.25rem 0.6rem; text-align: right; }
th { background: #f2f2f2; }
td:first-child, th:first-child { text-align: left; }
.note { background: #fff4e5; border-left: 4px solid #f0a020; padding: 0.5rem 1rem;
        margin: 0.5rem 0; }
img { max-width: 100%; }
dt { font-weight: 600; } dd { margin: 0 0 0.5rem 1rem; }
"""


def _fmt(value: float | int | None, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, int):
        return str(value)
    return f"{value:.{digits}f}"


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f"<td>{escape(cell)}</td>" for cell in row) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _image(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<p><img alt="{escape(alt)}" src="data:image/png;base64,{data}"></p>'


def _summary(evaluation: Evaluation) -> str:
    columns: list[tuple[str, CalibrationReport]] = [
        (f"adapter ({evaluation.confidence_kind})", evaluation.calibration)
    ]
    if evaluation.baseline is not None:
        columns.append(("baseline", evaluation.baseline))
    figures: list[tuple[str, Callable[[CalibrationReport], str]]] = [
        ("items", lambda r: _fmt(r.n)),
        ("accuracy", lambda r: _fmt(r.accuracy)),
        ("mean confidence", lambda r: _fmt(r.mean_confidence)),
        ("ECE (10 bins)", lambda r: _fmt(r.ece, 4)),
        ("ECE (15 bins)", lambda r: _fmt(r.ece_15, 4)),
        ("Brier score", lambda r: _fmt(r.brier, 4)),
        ("AUROC", lambda r: _fmt(r.auroc, 4)),
        ("sharpness", lambda r: _fmt(r.sharpness, 4)),
    ]
    rows = [[name, *(show(report) for _, report in columns)] for name, show in figures]
    return _table(["figure", *(name for name, _ in columns)], rows)


def _reliability(report: CalibrationReport) -> str:
    rows = [
        [
            f"[{row.lower:.2f}, {row.upper:.2f})",
            _fmt(row.count),
            _fmt(row.mean_confidence),
            _fmt(row.accuracy),
            _fmt(row.gap),
        ]
        for row in report.reliability
    ]
    return _table(["bin", "count", "mean confidence", "accuracy", "accuracy − confidence"], rows)


def _thin(points: Sequence[OperatingPoint]) -> list[OperatingPoint]:
    if len(points) <= MAX_CURVE_ROWS:
        return list(points)
    step = (len(points) - 1) / (MAX_CURVE_ROWS - 1)
    return [points[round(i * step)] for i in range(MAX_CURVE_ROWS)]


Column = tuple[str, Callable[[OperatingPoint], float | None]]

_CASCADE_COLUMNS: tuple[Column, ...] = (
    ("returned", lambda p: p.returned_rate),
    ("escalated", lambda p: p.escalation_rate),
    ("accuracy returned", lambda p: p.returned_accuracy),
    ("cascade accuracy", lambda p: p.overall_accuracy),
    ("relative cost", lambda p: p.relative_cost),
)
_GUARD_COLUMNS: tuple[Column, ...] = (
    ("coverage", lambda p: p.coverage),
    ("withheld", lambda p: p.withheld_rate),
    ("accuracy returned", lambda p: p.returned_accuracy),
    ("risk", lambda p: p.risk),
)


def _points_table(points: Sequence[OperatingPoint], columns: Sequence[Column]) -> str:
    """One row per threshold (thinned to `MAX_CURVE_ROWS`), one column per measure."""
    rows = [[f"{p.return_at:g}", *(_fmt(value(p)) for _, value in columns)] for p in _thin(points)]
    return _table(["threshold", *(header for header, _ in columns)], rows)


def _definitions() -> str:
    items = {
        "ECE": "sum over equal-width confidence bins of (share of items in the bin) × "
        "|accuracy − mean confidence|; with 10 bins each of the adapter's ten values has its own.",
        "Brier score": "mean of (confidence − outcome)², outcome 1 when right, 0 when wrong.",
        "AUROC": "probability that a random right answer has a higher confidence than a random "
        "wrong one (ties count one half); how well the confidence ranks answers.",
        "Sharpness": SHARPNESS_DEFINITION + ".",
        "APGR": "area under (cascade accuracy − local accuracy) / (large accuracy − local "
        "accuracy) over the escalation rate from 0 to 1; random escalation scores 0.5.",
        "AURC": "area under the risk-coverage curve; lower is better.",
        "Relative cost": "(local cost of every item + large cost of the escalated ones) / large "
        "cost of every item; by default local costs 0 and large 1 per item.",
    }
    return (
        "<dl>"
        + "".join(f"<dt>{escape(k)}</dt><dd>{escape(v)}</dd>" for k, v in items.items())
        + "</dl>"
    )


def write_report(evaluation: Evaluation, pictures: Mapping[str, Path], out_dir: Path) -> Path:
    summary = evaluation.cascade_summary
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        "<title>certainty-gateway evaluation</title>",
        f"<style>{_STYLE}</style></head><body>",
        "<h1>Certainty evaluation</h1>",
        f"<p>Source: {escape(evaluation.source)}. Confidence: "
        f"{escape(evaluation.confidence_kind)}.</p>",
        *(f'<p class="note">{escape(note)}</p>' for note in evaluation.notes),
        "<h2>Calibration</h2>",
        _summary(evaluation),
        _image(pictures["reliability"], "reliability diagram"),
        "<h3>Reliability table (10 bins)</h3>",
        _reliability(evaluation.calibration),
    ]
    if evaluation.baseline is not None and "reliability_baseline" in pictures:
        parts += [
            "<h3>Baseline</h3>",
            _image(pictures["reliability_baseline"], "reliability diagram of the baseline"),
            _reliability(evaluation.baseline),
        ]
    parts += [
        "<h2>Cascade</h2>",
        _table(
            [
                "local accuracy",
                "large accuracy",
                "APGR",
                "escalation for 50 % of gap",
                "escalation for 80 % of gap",
            ],
            [
                [
                    _fmt(summary.local_accuracy),
                    _fmt(summary.large_accuracy),
                    _fmt(summary.apgr),
                    _fmt(summary.escalation_for_gap.get("50pct")),
                    _fmt(summary.escalation_for_gap.get("80pct")),
                ]
            ],
        ),
        _image(pictures["cascade"], "cascade curve"),
        _points_table(evaluation.cascade, _CASCADE_COLUMNS),
        "<h2>Guard</h2>",
        f"<p>AURC = {_fmt(evaluation.aurc, 4)}</p>",
        _image(pictures["risk_coverage"], "risk-coverage curve"),
        _points_table(evaluation.guard, _GUARD_COLUMNS),
    ]
    if evaluation.policy is not None:
        point = evaluation.policy.point
        parts += [
            f"<h2>Policy {escape(evaluation.policy.policy.name)}</h2>",
            _table(
                [
                    "return_at",
                    "escalate_at",
                    "returned",
                    "escalated",
                    "withheld",
                    "accuracy returned",
                    "overall accuracy",
                    "relative cost",
                ],
                [
                    [
                        f"{point.return_at:g}",
                        f"{point.escalate_at:g}",
                        _fmt(point.returned_rate),
                        _fmt(point.escalation_rate),
                        _fmt(point.withheld_rate),
                        _fmt(point.returned_accuracy),
                        _fmt(point.overall_accuracy),
                        _fmt(point.relative_cost),
                    ]
                ],
            ),
        ]
    parts += ["<h2>Definitions</h2>", _definitions(), "</body></html>"]
    path = out_dir / REPORT
    path.write_text("\n".join(parts) + "\n", encoding="utf-8")
    return path
