"""Running the (miniature) model over a dataset: batches, results on disk, resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway.cli import main
from gateway.engine.local import LocalEngine
from gateway.errors import InvalidRequest
from gateway.evaluate.dataset import read_dataset
from gateway.evaluate.runner import RESULTS, run_dataset
from gateway.types import SamplingParams

SAMPLING = SamplingParams(max_tokens=6, temperature=0.0)

ROWS = [
    {"question": "What is the capital of France?", "answer": "Paris"},
    {"question": "Which planet is red?", "choices": ["Venus", "Mars"], "answer_index": 1},
    {"question": "Who wrote Hamlet?", "answer": "Shakespeare", "response": "Shakespeare."},
    {
        "question": "How long is the trail?",
        "documents": [{"doc_id": 1, "text": "The trail is 14 km long."}],
        "answer": "14 km",
        "escalated_correct": True,
    },
    {"messages": [{"role": "user", "content": "2 + 2?"}], "answer": ["4", "four"]},
]


class Interrupted(Exception):
    """Stands for Ctrl-C arriving between two batches."""


def _data(path: Path, rows: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _interrupt_after_first_batch(done: int) -> None:
    raise Interrupted


def _result_lines(out: Path) -> list[str]:
    return [line for line in (out / RESULTS).read_text().split("\n") if line]


def test_an_interrupted_run_resumes_where_it_stopped(engine: LocalEngine, tmp_path: Path) -> None:
    items = read_dataset(_data(tmp_path / "data.jsonl", ROWS))
    out = tmp_path / "out"
    with pytest.raises(Interrupted):
        run_dataset(
            engine,
            items,
            out,
            sampling=SAMPLING,
            batch_size=2,
            on_batch=_interrupt_after_first_batch,
            progress=False,
        )
    assert len(_result_lines(out)) == 2
    # A kill in the middle of a write leaves a torn last line.
    with (out / RESULTS).open("a") as results:
        results.write('{"key": "3:0123", "respo')

    results_list, summary = run_dataset(
        engine, items, out, sampling=SAMPLING, batch_size=2, progress=False
    )
    assert (summary.reused, summary.new, summary.total) == (2, 3, 5)
    assert [r["line"] for r in results_list] == [1, 2, 3, 4, 5]
    lines = [json.loads(line) for line in _result_lines(out)]
    assert sorted(r["key"] for r in lines) == sorted(item.key for item in items)
    for result in results_list:
        assert 0.0 <= result["expected_confidence"] <= 1.0
        assert len(result["distribution"]) == 10
        assert isinstance(result["correct"], bool)
    assert results_list[2]["response"] == "Shakespeare."
    assert results_list[2]["correct"] is True
    assert results_list[3]["escalated_correct"] is True


def test_an_edited_line_is_run_again(engine: LocalEngine, tmp_path: Path) -> None:
    data = _data(tmp_path / "data.jsonl", ROWS[:3])
    out = tmp_path / "out"
    run_dataset(engine, read_dataset(data), out, sampling=SAMPLING, progress=False)
    edited = [dict(ROWS[0], answer="Paris, France"), *ROWS[1:3]]
    _, summary = run_dataset(
        engine, read_dataset(_data(data, edited)), out, sampling=SAMPLING, progress=False
    )
    assert (summary.reused, summary.new) == (2, 1)
    assert len(_result_lines(out)) == 3


def test_results_of_other_settings_are_not_mixed_in(engine: LocalEngine, tmp_path: Path) -> None:
    items = read_dataset(_data(tmp_path / "data.jsonl", ROWS[:2]))
    out = tmp_path / "out"
    run_dataset(engine, items, out, sampling=SAMPLING, progress=False)
    longer = SamplingParams(max_tokens=9, temperature=0.0)
    with pytest.raises(InvalidRequest, match="max_tokens differ"):
        run_dataset(engine, items, out, sampling=longer, progress=False)
    _, summary = run_dataset(engine, items, out, sampling=longer, fresh=True, progress=False)
    assert summary.new == 2


def test_eval_command_on_the_miniature_model_says_its_figures_are_meaningless(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _data(tmp_path / "data.jsonl", ROWS)
    out = tmp_path / "out"
    argv = [
        "eval",
        str(data),
        "--out",
        str(out),
        "--base",
        str(tiny_model_dir / "base"),
        "--adapter",
        str(tiny_model_dir / "adapter"),
        "--max-tokens",
        "4",
        "--batch-size",
        "5",
    ]
    assert main(argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n"] == 5
    assert any("meaningless" in note for note in metrics["notes"])
    assert "meaningless" in (out / "report.html").read_text()
    assert len((out / "scores.jsonl").read_text().splitlines()) == 5
    assert "meaningless" in capsys.readouterr().err
