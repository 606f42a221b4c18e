"""The labeled dataset `eval` runs the model on: one question per JSON line.

Each line holds
- `messages` (a chat, OpenAI style) or `question` (a string, asked as one user turn);
- optionally `documents` (a list of objects, rendered as RAG documents);
- how to judge the answer: `answer` (a gold string or a list of them) or `choices` (a list of
  strings) with `answer_index` (0-based); with `question` + `choices` the options are added to the
  question as lettered lines;
- optionally `response` (an answer already given, e.g. from logs: only scored, not generated),
  `escalated_correct` (bool), `cost` (`{"local": x, "large": y}`) and `id`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from gateway.evaluate.judge import LETTERS, GoldAnswer, Judge, MultipleChoice
from gateway.evaluate.lines import Line, read_lines
from gateway.types import Document, Message

ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class EvalItem:
    """One question to answer, score and judge."""

    line: int
    digest: str
    messages: tuple[Message, ...]
    documents: tuple[Document, ...]
    judge: Judge
    response: str | None
    escalated_correct: bool | None
    cost_local: float
    cost_large: float
    item_id: str | None

    @property
    def key(self) -> str:
        """Identifies this item in the results file: line number and a hash of the line."""
        return f"{self.line}:{self.digest}"


def sample_path() -> Path:
    """The small labeled sample that ships with the package."""
    return Path(str(resources.files("gateway.evaluate") / "data" / "sample.jsonl"))


def line_digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def read_dataset(path: Path) -> list[EvalItem]:
    return [item_from_line(line) for line in read_lines(path)]


def item_from_line(line: Line) -> EvalItem:
    judge = _judge(line)
    messages = _messages(line, judge)
    response = line.value.get("response")
    if response is not None and not isinstance(response, str):
        raise line.error("'response' must be a string", "response")
    item_id = line.value.get("id")
    cost_local, cost_large = line.costs()
    return EvalItem(
        line=line.number,
        digest=line_digest(line.text),
        messages=messages,
        documents=_documents(line),
        judge=judge,
        response=response,
        escalated_correct=line.get_bool("escalated_correct"),
        cost_local=cost_local,
        cost_large=cost_large,
        item_id=str(item_id) if item_id is not None else None,
    )


def _judge(line: Line) -> Judge:
    value = line.value
    if "choices" in value:
        choices = value["choices"]
        if (
            not isinstance(choices, list)
            or not 2 <= len(choices) <= len(LETTERS)
            or not all(isinstance(c, str) for c in choices)
        ):
            raise line.error(f"'choices' must be a list of 2 to {len(LETTERS)} strings", "choices")
        index = line.require("answer_index")
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(choices):
            raise line.error(
                f"'answer_index' must be an integer from 0 to {len(choices) - 1}", "answer_index"
            )
        return MultipleChoice(choices=tuple(choices), answer_index=index)
    if "answer" not in value:
        raise line.error("missing field 'answer' (or 'choices' and 'answer_index')", "answer")
    gold = value["answer"]
    if isinstance(gold, str):
        gold = [gold]
    if (
        not isinstance(gold, list)
        or not gold
        or not all(isinstance(g, str) and g.strip() for g in gold)
    ):
        raise line.error("'answer' must be a non-empty string or list of strings", "answer")
    return GoldAnswer(gold=tuple(gold))


def _messages(line: Line, judge: Judge) -> tuple[Message, ...]:
    value = line.value
    if "messages" in value:
        raw = value["messages"]
        if not isinstance(raw, list) or not raw:
            raise line.error("'messages' must be a non-empty list", "messages")
        messages: list[Message] = []
        for i, message in enumerate(raw):
            field = f"messages[{i}]"
            if not isinstance(message, Mapping):
                raise line.error(f"'{field}' must be an object", field)
            role, content = message.get("role"), message.get("content")
            if role not in ROLES:
                raise line.error(f"'{field}.role' must be one of {', '.join(ROLES)}", field)
            if not isinstance(content, str):
                raise line.error(f"'{field}.content' must be a string", field)
            messages.append(Message(role=role, content=content))
        if messages[-1].role != "user":
            raise line.error("the last message must be the user's", "messages")
        return tuple(messages)
    question = value.get("question")
    if not isinstance(question, str) or not question.strip():
        raise line.error("missing field 'question' (or 'messages')", "question")
    if isinstance(judge, MultipleChoice):
        question = judge.prompt(question)
    return (Message(role="user", content=question),)


def _documents(line: Line) -> tuple[Document, ...]:
    documents: Any = line.value.get("documents")
    if documents is None:
        return ()
    if not isinstance(documents, list) or not all(isinstance(d, Mapping) for d in documents):
        raise line.error("'documents' must be a list of objects", "documents")
    return tuple(documents)
