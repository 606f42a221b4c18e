"""The command line: make-tiny-model and score, including their errors."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.cli import build_parser, main
from gateway.engine.tiny import build_base_model, build_tokenizer
from gateway.engine.tiny_teach import teach_answers


def _score_args(model_dir: Path, *extra: str) -> list[str]:
    return [
        "score",
        "--question",
        "What is the capital of France?",
        "--answer",
        "Paris.",
        "--base",
        str(model_dir / "base"),
        "--adapter",
        str(model_dir / "adapter"),
        *extra,
    ]


@pytest.mark.parametrize("mode", ["logits", "generate"])
def test_score_prints_one_json_object(
    tiny_model_dir: Path, capsys: pytest.CaptureFixture[str], mode: str
) -> None:
    assert main(_score_args(tiny_model_dir, "--mode", mode)) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result) >= {"score", "confidence", "expected_confidence", "distribution", "mode"}
    assert result["mode"] == mode
    assert 0 <= result["score"] <= 9
    assert sum(result["distribution"]) == pytest.approx(1.0)


def test_score_reads_documents_from_a_file(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    documents = tmp_path / "docs.json"
    documents.write_text(json.dumps([{"text": "Paris is the capital of France."}]))
    assert main(_score_args(tiny_model_dir, "--documents", str(documents))) == 0
    with_docs = json.loads(capsys.readouterr().out)
    assert main(_score_args(tiny_model_dir)) == 0
    without = json.loads(capsys.readouterr().out)
    assert with_docs["distribution"] != without["distribution"]


def test_score_with_a_missing_model_folder_fails_with_one_line(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    args = _score_args(tiny_model_dir)
    args[args.index("--base") + 1] = str(tmp_path / "missing")
    done = subprocess.run(
        [sys.executable, "-m", "gateway", *args], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if "error" in line]
    assert len(errors) == 1
    assert "no such folder" in errors[0]


def test_score_with_an_adapter_that_does_not_fit_the_base_exits_2(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tokenizer = build_tokenizer(0)
    narrow = build_base_model(tokenizer, hidden_size=32)
    narrow.save_pretrained(tmp_path / "narrow")
    tokenizer.save_pretrained(tmp_path / "narrow")
    args = _score_args(tiny_model_dir)
    args[args.index("--base") + 1] = str(tmp_path / "narrow")
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "could not load the adapter" in err


def test_score_with_an_empty_answer_exits_2(
    tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = _score_args(tiny_model_dir)
    args[args.index("--answer") + 1] = "  "
    assert main(args) == 2
    assert "answer is empty" in capsys.readouterr().err


def test_make_tiny_model_writes_base_and_adapter_in_loadable_layouts(tmp_path: Path) -> None:
    assert main(["make-tiny-model", str(tmp_path / "m"), "--seed", "3"]) == 0
    assert (tmp_path / "m" / "base" / "config.json").is_file()
    assert (tmp_path / "m" / "base" / "tokenizer.json").is_file()
    assert (tmp_path / "m" / "adapter" / "adapter_config.json").is_file()
    sub = tmp_path / "m" / "adapter" / "uncertainty" / "granite-4.0-micro" / "lora"
    config = json.loads((sub / "adapter_config.json").read_text())
    assert config["r"] == 8
    assert set(config["target_modules"]) == {
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "input_linear",
        "output_linear",
    }


def test_teaching_the_miniature_shows_a_progress_bar(capsys: pytest.CaptureFixture[str]) -> None:
    tokenizer = build_tokenizer(0)
    base = build_base_model(tokenizer)
    teach_answers(base, tokenizer, steps=3, progress=True)
    err = capsys.readouterr().err
    assert "teaching the base to answer" in err
    assert "3/3" in err


def _every_command(
    parser: argparse.ArgumentParser, path: str = "certainty-gateway"
) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _every_command(sub, f"{path} {name}")


def test_every_option_of_every_command_has_help_text() -> None:
    missing = [
        f"{path} {action.option_strings or action.dest}"
        for path, parser in _every_command(build_parser())
        for action in parser._actions
        if not isinstance(action, argparse._SubParsersAction) and not (action.help or "").strip()
    ]
    assert missing == []
