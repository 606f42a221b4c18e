"""Reading labeled datasets and score files, and judging answers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from gateway.errors import InvalidRequest
from gateway.evaluate.dataset import read_dataset, sample_path
from gateway.evaluate.judge import GoldAnswer, MultipleChoice, extract_choice, matches_gold
from gateway.evaluate.scores import read_scores

CHOICES = ("London", "Paris", "Rome", "Berlin")


def _write(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


@pytest.mark.parametrize(
    ("answer", "right"),
    [
        ("Paris", True),
        ("The capital of France is Paris.", True),
        ("paris!", True),
        ("Parisian food is good", False),
        ("Lyon", False),
    ],
)
def test_gold_strings_match_normalized_and_as_whole_words(answer: str, right: bool) -> None:
    assert matches_gold(answer, ["Paris"]) is right


def test_articles_and_punctuation_do_not_matter() -> None:
    assert matches_gold("It is the U.S.A.", ["USA"])
    assert GoldAnswer(gold=("Mount Everest", "Everest")).judge("everest").correct


@pytest.mark.parametrize(
    ("answer", "picked"),
    [
        ("B", 1),
        ("B. Paris is the capital.", 1),
        ("(C)", 2),
        ("The answer is D.", 3),
        ("Answer: (B)", 1),
        ("I think B is right", 1),
        ("A dog would say Paris", 1),  # "A" as an article is not a letter; "Paris" is named
        ("Rome, of course", 2),
        ("Rome or Paris", None),
        ("I don't know", None),
    ],
)
def test_the_letter_is_read_from_the_answer(answer: str, picked: int | None) -> None:
    assert extract_choice(answer, CHOICES) == picked


def test_multiple_choice_verdict_reports_the_letter() -> None:
    verdict = MultipleChoice(choices=CHOICES, answer_index=1).judge("B. Paris")
    assert verdict.correct
    assert verdict.extracted == "B"


def test_the_shipped_sample_parses_and_mixes_both_kinds() -> None:
    items = read_dataset(sample_path())
    assert 30 <= len(items) <= 60
    kinds = {type(item.judge) for item in items}
    assert kinds == {GoldAnswer, MultipleChoice}
    assert any(item.documents for item in items)
    choice_prompt = next(i for i in items if isinstance(i.judge, MultipleChoice)).messages[0]
    assert "\nA. " in choice_prompt.content


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ("{not json", "line 2: not valid JSON"),
        ([1, 2], "line 2: each line must be a JSON object"),
        ({"question": "Q?"}, "line 2: missing field 'answer'"),
        ({"answer": "A"}, "line 2: missing field 'question'"),
        ({"question": "Q?", "choices": ["a", "b"]}, "line 2: missing field 'answer_index'"),
        ({"question": "Q?", "choices": ["a", "b"], "answer_index": 2}, "'answer_index' must"),
        ({"messages": [{"role": "bot", "content": "x"}], "answer": "A"}, "messages\\[0\\].role"),
        ({"question": "Q?", "answer": "A", "cost": {"large": -1}}, "'cost.large' must be >= 0"),
    ],
)
def test_a_bad_dataset_line_is_named(tmp_path: Path, row: Any, message: str) -> None:
    path = _write(tmp_path / "data.jsonl", [{"question": "Fine?", "answer": "yes"}, row])
    with pytest.raises(InvalidRequest, match=message):
        read_dataset(path)


def test_scores_need_confidence_and_correct(tmp_path: Path) -> None:
    path = _write(tmp_path / "s.jsonl", [{"confidence": 0.5, "correct": True}, {"correct": True}])
    with pytest.raises(InvalidRequest, match="line 2: missing field 'confidence'"):
        read_scores(path)


def test_an_optional_score_field_must_be_on_every_line(tmp_path: Path) -> None:
    rows = [
        {"confidence": 0.5, "correct": True, "escalated_correct": True},
        {"confidence": 0.7, "correct": False},
    ]
    with pytest.raises(InvalidRequest, match="line 2: 'escalated_correct' is given on other"):
        read_scores(_write(tmp_path / "s.jsonl", rows))


def test_scores_refuse_a_confidence_outside_zero_one(tmp_path: Path) -> None:
    rows = [{"confidence": 1.5, "correct": True}]
    with pytest.raises(InvalidRequest, match="line 1: 'confidence' must be within"):
        read_scores(_write(tmp_path / "s.jsonl", rows))
