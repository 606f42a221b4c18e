"""Judging an answer: normalized match against gold strings, or the letter of a multiple choice.

Gold strings: the answer and the gold are normalized as SQuAD does (lower case, punctuation
removed, the articles "a", "an", "the" removed, single spaces); the answer is right when it equals
a gold string or contains one as whole words ("Paris." and "The capital is Paris" both match
"paris").

Multiple choice: the letter is read from the answer ("B", "(B)", "B. Paris", "The answer is B");
when there is no letter, an answer that contains the text of exactly one choice picks it.
"""

from __future__ import annotations

import re
import string
from collections.abc import Sequence
from dataclasses import dataclass

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)


def normalize(text: str) -> str:
    lowered = text.lower().translate(_PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", lowered).split())


def matches_gold(answer: str, gold: Sequence[str]) -> bool:
    """True when the normalized answer equals or contains (as whole words) a normalized gold."""
    said = f" {normalize(answer)} "
    for item in gold:
        expected = normalize(item)
        if expected and f" {expected} " in said:
            return True
    return False


def _letter_patterns(letters: str) -> list[re.Pattern[str]]:
    group = f"([{letters}])"
    return [
        # "The answer is B", "Answer: (B)", "the correct option is B."
        re.compile(
            rf"\b(?i:answer|option|choice)\s*(?:(?i:is|would be)\s*)?[:\-]?\s*"
            rf"\(?{group}\)?(?![\w'])"
        ),
        # "B", "B.", "(B) Paris", "B: Paris" at the start
        re.compile(rf"^\s*\(?{group}(?:[.):,]|\s*$|\s*\n)"),
        # "(B)" anywhere
        re.compile(rf"\({group}\)"),
    ]


_LONE = re.compile(r"(?<![\w'])([A-Z])(?![\w'])")
_WORD_FOLLOWS = re.compile(r"\s+[a-z]")


def _lone_letter(answer: str, letters: str) -> str | None:
    """A capital letter standing alone ("I think B is right"), but not the article "A word"."""
    for match in _LONE.finditer(answer):
        letter = match.group(1)
        if letter not in letters:
            continue
        if letter in "AI" and _WORD_FOLLOWS.match(answer, match.end()):
            continue
        return letter
    return None


def extract_choice(answer: str, choices: Sequence[str]) -> int | None:
    """The index of the choice the answer picks, or `None` when it picks none (or several)."""
    letters = LETTERS[: len(choices)]
    for pattern in _letter_patterns(letters):
        match = pattern.search(answer)
        if match is not None:
            return letters.index(match.group(1))
    lone = _lone_letter(answer, letters)
    if lone is not None:
        return letters.index(lone)
    said = f" {normalize(answer)} "
    named = [i for i, choice in enumerate(choices) if f" {normalize(choice)} " in said]
    return named[0] if len(named) == 1 else None


@dataclass(frozen=True)
class GoldAnswer:
    """Right when the answer matches one of the gold strings."""

    gold: tuple[str, ...]

    def judge(self, answer: str) -> Verdict:
        return Verdict(correct=matches_gold(answer, self.gold), extracted=None)


@dataclass(frozen=True)
class MultipleChoice:
    """Right when the answer's letter is the gold letter."""

    choices: tuple[str, ...]
    answer_index: int

    def judge(self, answer: str) -> Verdict:
        picked = extract_choice(answer, self.choices)
        return Verdict(
            correct=picked == self.answer_index,
            extracted=LETTERS[picked] if picked is not None else None,
        )

    def prompt(self, question: str) -> str:
        """A question with lettered options, as MMLU-style evaluations put it."""
        options = "\n".join(f"{LETTERS[i]}. {c}" for i, c in enumerate(self.choices))
        return (
            f"{question}\n\n{options}\n\n"
            "Answer with the letter of the correct option, then a short explanation."
        )


@dataclass(frozen=True)
class Verdict:
    correct: bool
    extracted: str | None


Judge = GoldAnswer | MultipleChoice
