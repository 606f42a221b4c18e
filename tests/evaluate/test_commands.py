"""The `eval --scores` and `tune` commands, end to end through the command line."""

from __future__ import annotations

import base64
import json
from html.parser import HTMLParser
from pathlib import Path

import matplotlib.image
import pytest
import yaml

from gateway.cli import main
from tests.evaluate.synthetic import calibrated_levels

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

POLICY = """\
# Answer locally when confident; ask a larger model when unsure.
name: cascade
description: The shipped cascade.
confidence: expected          # or "score"
return_at: 0.75               # confidence >= 0.75 -> return the local answer
escalate_at: 0.25
escalate_to: large
on_escalation_error: return_local
withhold_message: "I'm not confident enough to answer that reliably."
"""


@pytest.fixture
def scores_file(tmp_path: Path) -> Path:
    items = calibrated_levels(per_level=20)
    assert items.escalated_correct is not None
    path = tmp_path / "scores.jsonl"
    with path.open("w") as out:
        for i in range(items.n):
            row = {
                "confidence": float(items.confidence[i]),
                "correct": bool(items.correct[i]),
                "escalated_correct": bool(items.escalated_correct[i]),
                "baseline_confidence": 0.9,
            }
            out.write(json.dumps(row) + "\n")
    return path


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []
        self.tables = 0
        self.links: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "img":
            self.images.append(found.get("src") or "")
        if tag == "table":
            self.tables += 1
        if tag in ("link", "script"):
            self.links.append(tag)

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def test_eval_from_scores_writes_metrics_pictures_and_a_self_contained_report(
    scores_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    assert main(["eval", "--scores", str(scores_file), "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("n", "accuracy", "ece", "brier", "auroc", "sharpness"):
        assert isinstance(metrics[key], int | float), key
    assert metrics["n"] == 200
    assert metrics["ece"] == pytest.approx(0.0, abs=1e-12)  # calibrated by construction
    assert metrics["baseline"]["ece"] == pytest.approx(0.4)  # always 0.9, right half the time
    assert metrics["cascade"]["apgr"] > 0.5
    assert "standard deviation" in metrics["sharpness_definition"]
    for name in ("reliability", "reliability_baseline", "cascade", "risk_coverage"):
        picture = out / f"{name}.png"
        assert picture.read_bytes().startswith(PNG_MAGIC)
        assert matplotlib.image.imread(picture).shape[2] in (3, 4)
    page = _Page()
    page.feed((out / "report.html").read_text())
    page.close()
    assert len(page.images) == 4
    for src in page.images:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1]).startswith(PNG_MAGIC)
    assert page.links == []  # nothing to fetch: the page stands alone
    assert page.tables >= 5
    assert "ece=0.0000" in capsys.readouterr().out


def test_eval_marks_a_policy_operating_point(scores_file: Path, tmp_path: Path) -> None:
    policy = tmp_path / "cascade.yaml"
    policy.write_text(POLICY)
    out = tmp_path / "out"
    assert (
        main(["eval", "--scores", str(scores_file), "--out", str(out), "--policy", str(policy)])
        == 0
    )
    point = json.loads((out / "metrics.json").read_text())["policy"]
    assert point["name"] == "cascade"
    assert (point["return_at"], point["escalate_at"]) == (0.75, 0.25)
    assert point["returned_rate"] == pytest.approx(0.3)
    assert point["withheld_rate"] == pytest.approx(0.2)


def test_eval_names_the_bad_line_and_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    scores = tmp_path / "scores.jsonl"
    scores.write_text('{"confidence": 0.5, "correct": true}\n{"confidence": 0.5}\n')
    assert main(["eval", "--scores", str(scores), "--out", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0
    assert "line 2: missing field 'correct'" in error


def test_eval_needs_exactly_one_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval", "--out", str(tmp_path / "out")]) == 2
    assert "exactly one of DATA.jsonl, --scores or --sample" in capsys.readouterr().err


def test_tune_prints_thresholds_that_meet_the_target(
    scores_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["tune", "--scores", str(scores_file), "--target", "returned_accuracy>=0.82", "--json"]
    assert main(argv) == 0
    printed = json.loads(capsys.readouterr().out)
    best = printed["choices"][0]
    assert (best["return_at"], best["escalate_at"]) == (0.7, 0.0)
    assert all(choice["returned_accuracy"] >= 0.82 for choice in printed["choices"])


def test_tune_writes_a_new_policy_file(scores_file: Path, tmp_path: Path) -> None:
    policy = tmp_path / "policies" / "tuned.yaml"
    argv = ["tune", "--scores", str(scores_file), "--target", "returned_accuracy>=0.82"]
    assert main([*argv, "--write", str(policy)]) == 0
    written = yaml.safe_load(policy.read_text())
    assert written["name"] == "tuned"
    assert (written["return_at"], written["escalate_at"]) == (0.7, 0.0)
    assert written["confidence"] == "expected"
    assert {"escalate_to", "on_escalation_error", "withhold_message"} <= written.keys()


def test_tune_updates_a_policy_keeping_other_keys_and_comments(
    scores_file: Path, tmp_path: Path
) -> None:
    policy = tmp_path / "cascade.yaml"
    policy.write_text(POLICY)
    argv = ["tune", "--scores", str(scores_file), "--target", "escalation_rate<=0.3"]
    assert main([*argv, "--write", str(policy)]) == 0
    text = policy.read_text()
    written = yaml.safe_load(text)
    assert (written["return_at"], written["escalate_at"]) == (0.3, 0.0)
    assert written["withhold_message"] == "I'm not confident enough to answer that reliably."
    assert "# Answer locally when confident" in text
    assert 'confidence: expected          # or "score"' in text
    assert "tuned on scores.jsonl for escalation_rate<=0.3" in text


def test_tune_exits_1_when_no_threshold_meets_the_target(
    scores_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["tune", "--scores", str(scores_file), "--target", "returned_accuracy>=0.99"]
    assert main(argv) == 1
    assert "no thresholds meet returned_accuracy>=0.99" in capsys.readouterr().err


def test_tune_refuses_a_bad_target_with_exit_2(
    scores_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["tune", "--scores", str(scores_file), "--target", "returned_accuracy~0.9"]
    assert main(argv) == 2
    assert "bad target 'returned_accuracy~0.9'" in capsys.readouterr().err
