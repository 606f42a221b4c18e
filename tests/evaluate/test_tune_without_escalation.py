"""`tune` on scores without `escalated_correct`: it ranks by what the data has, and says so."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway.cli import main
from tests.evaluate.synthetic import calibrated_levels


@pytest.fixture
def scores_file(tmp_path: Path) -> Path:
    items = calibrated_levels(per_level=20)
    path = tmp_path / "scores.jsonl"
    with path.open("w") as out:
        for i in range(items.n):
            row = {"confidence": float(items.confidence[i]), "correct": bool(items.correct[i])}
            out.write(json.dumps(row) + "\n")
    return path


def test_the_table_shows_the_figure_it_ranks_by(
    scores_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["tune", "--scores", str(scores_file), "--target", "escalation_rate<=0.2"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "ranked by right_or_escalated" in out
    lines = out.splitlines()
    header_at = next(i for i, line in enumerate(lines) if line.split()[:1] == ["return_at"])
    header = lines[header_at].split()
    assert "acc_overall" not in header
    column = header.index("right_or_escalated")
    values = [float(line.split()[column]) for line in lines[header_at + 2 :]]
    assert values
    assert values[0] == max(values)


def test_json_names_the_ranking_and_leaves_out_the_unknown_accuracy(
    scores_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["tune", "--scores", str(scores_file), "--target", "escalation_rate<=0.2", "--json"]
    assert main(argv) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["ranked_by"] == "right_or_escalated"
    best = printed["choices"][0]
    assert "overall_accuracy" not in best
    assert best["right_or_escalated"] == max(c["right_or_escalated"] for c in printed["choices"])
