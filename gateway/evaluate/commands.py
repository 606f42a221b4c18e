"""Command-line entries: `eval` (measure the certainty) and `tune` (thresholds from data)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from gateway.errors import InvalidRequest
from gateway.model_options import add_model_options, load_engine

MINIATURE_PARAMETERS = 100_000_000
"""A model with fewer parameters than this is taken for the test/demo miniature."""


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    _register_eval(commands)
    _register_tune(commands)


def _register_eval(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "eval",
        help="measure the certainty's calibration and the cascade/guard curves; writes a report",
        description=(
            "Run the local model and its certainty adapter on a labeled JSON Lines dataset "
            "(or read ready scores with --scores) and write metrics.json, PNG pictures and "
            "report.html into --out. An interrupted run resumes from OUT/results.jsonl."
        ),
    )
    given = parser.add_argument_group("input (one of)")
    given.add_argument("data", nargs="?", metavar="DATA.jsonl", help="labeled questions")
    given.add_argument(
        "--scores", metavar="SCORES.jsonl", help="skip the model: confidence/correct per line"
    )
    given.add_argument(
        "--sample", action="store_true", help="use the small labeled sample shipped for the demo"
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="folder for the results")
    add_model_options(parser)
    parser.add_argument(
        "--policy", metavar="NAME", help="mark this policy's thresholds (a name or a YAML file)"
    )
    parser.add_argument(
        "--confidence",
        choices=["expected", "score"],
        default=None,
        help="which confidence to evaluate (default: the policy's, else expected)",
    )
    parser.add_argument("--batch-size", type=int, default=8, help="questions per forward pass")
    parser.add_argument("--max-tokens", type=int, default=128, help="longest answer, in tokens")
    parser.add_argument(
        "--fresh", action="store_true", help="discard results already in --out and start over"
    )
    parser.set_defaults(run=run_eval)


def _register_tune(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "tune",
        help="choose policy thresholds that meet a target on scored data",
        description=(
            "Measure every pair of thresholds (return_at, escalate_at) on SCORES.jsonl and print "
            "those that meet the target, best first. Targets: METRIC>=X or METRIC<=X, joined by "
            "commas or repeated --target; METRIC one of returned_accuracy, risk, coverage, "
            "escalation_rate, withheld_rate, answered_accuracy, overall_accuracy, relative_cost."
        ),
    )
    parser.add_argument(
        "--scores",
        required=True,
        metavar="SCORES.jsonl",
        help="one JSON object a line: confidence, correct (and optionally escalated_correct, "
        "cost); `eval` writes it as DIR/scores.jsonl",
    )
    parser.add_argument(
        "--target",
        required=True,
        action="append",
        metavar="EXPR",
        help='e.g. "returned_accuracy>=0.9" or "escalation_rate<=0.2, relative_cost<=0.3"',
    )
    parser.add_argument(
        "--objective",
        choices=["auto", "coverage", "overall_accuracy", "relative_cost"],
        default="auto",
        help="what to make best among the thresholds that meet the target",
    )
    parser.add_argument("--top", type=int, default=5, help="how many choices to print")
    parser.add_argument("--write", metavar="POLICY.yaml", help="put the best thresholds in it")
    parser.add_argument(
        "--confidence",
        choices=["expected", "score"],
        default="expected",
        help="the confidence the scores hold (written into a new policy file)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.set_defaults(run=run_tune)


# ---------------------------------------------------------------------------------- eval


def run_eval(args: argparse.Namespace) -> int:
    from gateway.evaluate.evaluation import evaluate, write_metrics
    from gateway.evaluate.plots import draw_all
    from gateway.evaluate.report import write_report
    from gateway.evaluate.scores import read_scores

    chosen = [
        name
        for name, on in (("DATA", args.data), ("--scores", args.scores), ("--sample", args.sample))
        if on
    ]
    if len(chosen) != 1:
        raise InvalidRequest("give exactly one of DATA.jsonl, --scores or --sample")
    policy = _policy(args.policy, args.config)
    kind = args.confidence or (policy.confidence if policy else "expected")
    out_dir = Path(args.out)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InvalidRequest(f"cannot create {out_dir}: {exc.strerror}") from exc
    notes: list[str] = []
    if args.scores:
        items = read_scores(Path(args.scores))
        source = f"scores from {args.scores}"
    else:
        items, source, notes = _run_model(args, out_dir, kind)
    evaluation = evaluate(items, confidence_kind=kind, source=source, policy=policy, notes=notes)
    write_metrics(evaluation, out_dir)
    report = write_report(evaluation, draw_all(evaluation, out_dir), out_dir)
    _print_summary(evaluation.as_dict())
    print(f"wrote {out_dir / 'metrics.json'} and {report}")
    return 0


def _run_model(args: argparse.Namespace, out_dir: Path, kind: Any) -> tuple[Any, str, list[str]]:
    from gateway.evaluate.dataset import read_dataset, sample_path
    from gateway.evaluate.runner import run_dataset, score_records
    from gateway.evaluate.scores import ScoredItems, write_scores
    from gateway.types import SamplingParams

    if args.batch_size < 1 or args.max_tokens < 1:
        raise InvalidRequest("--batch-size and --max-tokens must be at least 1")
    data = sample_path() if args.sample else Path(args.data)
    items = read_dataset(data)  # a bad line stops us before the model loads
    if not items:
        raise InvalidRequest(f"{data}: no questions")
    engine = load_engine(args)
    results, summary = run_dataset(
        engine,
        items,
        out_dir,
        sampling=SamplingParams(max_tokens=args.max_tokens, temperature=0.0),
        batch_size=args.batch_size,
        fresh=args.fresh,
    )
    records = score_records(results, kind)
    write_scores(out_dir / "scores.jsonl", records)
    notes: list[str] = []
    parameters = sum(int(p.numel()) for p in engine.model.parameters())
    if parameters < MINIATURE_PARAMETERS:
        notes.append(
            f"The model has only {parameters:,} parameters: this is the miniature test/demo "
            "model with random weights, its answers and certainties are noise, and every figure "
            "in this report is meaningless. Run it with the real model to measure anything."
        )
    if summary.failed:
        notes.append(
            f"{summary.failed} of {summary.total} items failed (too long for the context, or no "
            "score in the adapter's reply) and are left out; see results.jsonl."
        )
    if summary.reused:
        notes.append(f"{summary.reused} items were reused from an earlier, interrupted run.")
    if not records:
        raise InvalidRequest(f"no item of {data} could be scored; see {out_dir / 'results.jsonl'}")
    source = f"{data} answered and scored by {engine.model_id}"
    return ScoredItems.from_records(records), source, notes


def _policy(name: str | None, config: str | None) -> Any:
    if name is None:
        return None
    from gateway.config import load_settings
    from gateway.evaluate.policy_file import find_policy, read_thresholds

    given = Path(name)
    if given.suffix in (".yaml", ".yml") or given.is_file():
        return read_thresholds(find_policy(name, given.parent))
    settings = load_settings(Path(config) if config else None)
    return read_thresholds(find_policy(name, settings.policies_dir))


def _print_summary(metrics: dict[str, Any]) -> None:
    def show(value: Any) -> str:
        return (
            "n/a" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)
        )

    keys = ("n", "accuracy", "ece", "ece_15", "brier", "auroc", "sharpness")
    print("  ".join(f"{key}={show(metrics.get(key))}" for key in keys))
    cascade = metrics["cascade"]
    if cascade.get("apgr") is not None:
        print(
            f"apgr={show(cascade['apgr'])}  "
            f"escalation_for_50pct_gap={show(cascade['escalation_for_50pct_gap'])}  "
            f"escalation_for_80pct_gap={show(cascade['escalation_for_80pct_gap'])}"
        )
    for note in metrics.get("notes", []):
        print(f"note: {note}", file=sys.stderr)


# ---------------------------------------------------------------------------------- tune


_COLUMNS = (
    ("return_at", "return_at"),
    ("escalate_at", "escalate_at"),
    ("returned", "returned_rate"),
    ("escalated", "escalation_rate"),
    ("withheld", "withheld_rate"),
    ("acc_returned", "returned_accuracy"),
    ("acc_overall", "overall_accuracy"),
    ("rel_cost", "relative_cost"),
)
_RIGHT_OR_ESCALATED = "right_or_escalated"


def _figures(point: Any, knows_escalation: bool) -> dict[str, Any]:
    """The point's figures; without escalation labels, `right_or_escalated` replaces the unknown
    `overall_accuracy` (and `answered_accuracy`)."""
    figures: dict[str, Any] = point.as_dict()
    if not knows_escalation:
        right = (point.returned_accuracy or 0.0) * point.returned_rate
        figures[_RIGHT_OR_ESCALATED] = right + point.escalation_rate
        figures.pop("overall_accuracy", None)
        figures.pop("answered_accuracy", None)
    return figures


def run_tune(args: argparse.Namespace) -> int:
    from gateway.evaluate.policy_file import write_thresholds
    from gateway.evaluate.scores import read_scores
    from gateway.evaluate.sweep import Sweep
    from gateway.evaluate.tuner import parse_targets, tune

    targets = parse_targets(args.target)
    sweep = Sweep(read_scores(Path(args.scores)))
    result = tune(sweep, targets, objective=args.objective, top=args.top)
    target_text = ", ".join(str(t) for t in targets)
    choices = [p for p in (result.best, *result.alternatives) if p is not None]
    # Without `escalated_correct` the overall accuracy is unknown: the table shows, and the
    # ranking uses, what the data has (right returned answers + escalations, a stated proxy).
    known = sweep.knows_escalation
    ranked_by = _RIGHT_OR_ESCALATED if result.proxy else result.objective
    if args.json:
        print(
            json.dumps(
                {
                    "targets": [str(t) for t in targets],
                    "objective": result.objective,
                    "ranked_by": ranked_by,
                    "searched": result.searched,
                    "feasible": result.feasible,
                    "choices": [_figures(p, known) for p in choices],
                },
                indent=2,
            )
        )
    else:
        print(
            f"target: {target_text}; objective: {result.objective}; "
            f"{result.feasible} of {result.searched} threshold pairs meet it "
            f"(n = {sweep.n})"
        )
        if not known:
            print(
                "(no escalated_correct in the scores: the overall accuracy is unknown; "
                f"{_RIGHT_OR_ESCALATED} = returned answers that are right + escalated answers, "
                "counting every escalated answer as right"
                + (f"; ranked by {_RIGHT_OR_ESCALATED})" if result.proxy else ")")
            )
        if choices:
            print(_format_table(choices, known))
    if result.best is None:
        print(f"certainty-gateway: no thresholds meet {target_text}", file=sys.stderr)
        return 1
    if args.write:
        best = result.best
        note = (
            f"tuned on {Path(args.scores).name} for {target_text}: returned "
            f"{best.returned_rate:.3f}, escalated {best.escalation_rate:.3f}, accuracy returned "
            f"{_plain(best.returned_accuracy)}"
        )
        write_thresholds(
            Path(args.write),
            return_at=best.return_at,
            escalate_at=best.escalate_at,
            note=note,
            confidence=args.confidence,
        )
        print(
            f"wrote return_at={best.return_at:g} escalate_at={best.escalate_at:g} to {args.write}"
        )
    return 0


def _plain(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _format_table(points: list[Any], knows_escalation: bool = True) -> str:
    columns = [
        (title, key)
        if knows_escalation or key != "overall_accuracy"
        else (_RIGHT_OR_ESCALATED, _RIGHT_OR_ESCALATED)
        for title, key in _COLUMNS
    ]
    header = [title for title, _ in columns]
    rows = [header]
    for point in points:
        figures = _figures(point, knows_escalation)
        rows.append(
            [
                f"{figures[key]:g}" if key in ("return_at", "escalate_at") else _plain(figures[key])
                for _, key in columns
            ]
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
