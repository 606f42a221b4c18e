"""`Answers`: a chat answer's body and headers, the fixed part of a cached decision's made once."""

from __future__ import annotations

import dataclasses
import time

import orjson
import pytest

from gateway.api.wire import Answers, answer_fields, completion_headers
from gateway.certainty import Certainty, Unscored
from gateway.completion import Completion, Usage
from gateway.policy import Action


def decision(text: str = "Paris.", *, cached: bool = True) -> Completion:
    certainty = Certainty(
        score=8,
        confidence=0.85,
        expected_confidence=0.8123,
        distribution=(0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.1, 0.1, 0.5, 0.3),
        mode="logits",
    )
    return Completion(
        text=text,
        finish_reason="stop",
        action=Action.RETURN,
        policy="granite",
        served_by="granite-4.0-micro",
        certainty=certainty,
        confidence=0.85,
        usage=Usage(12, 3),
        local_usage=Usage(12, 3),
        cached=cached,
    )


def test_an_answer_is_a_chat_completion_with_a_new_id_and_the_time() -> None:
    completion = decision('He said "Paris".\n')
    before = int(time.time())
    body, headers = Answers().answer(completion)
    answer = orjson.loads(body)
    assert list(answer) == [
        "id",
        "object",
        "created",
        "model",
        "choices",
        "usage",
        "system_fingerprint",
        "certainty",
    ]
    assert answer["id"].startswith("chatcmpl-")
    assert answer["object"] == "chat.completion"
    assert before <= answer["created"] <= int(time.time())
    assert {k: answer[k] for k in list(answer)[3:]} == answer_fields(completion)
    assert answer["choices"][0]["message"]["content"] == 'He said "Paris".\n'
    assert answer["usage"] == {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15}
    assert answer["certainty"]["cached"] is True
    expected = [(k.encode(), v.encode()) for k, v in completion_headers(completion).items()]
    assert headers == expected


def test_a_cached_decision_is_rendered_once_and_each_answer_has_its_own_id() -> None:
    answers = Answers()
    completion = decision()
    first, first_headers = answers.answer(completion)
    second, second_headers = answers.answer(completion)
    assert len(answers) == 1
    assert orjson.loads(first)["id"] != orjson.loads(second)["id"]
    assert first.split(b'"model"')[1] == second.split(b'"model"')[1]
    assert second_headers is first_headers  # the kept rendering, not a new one


def test_a_decision_made_now_is_not_kept() -> None:
    answers = Answers()
    body, _ = answers.answer(decision(cached=False))
    assert orjson.loads(body)["certainty"]["cached"] is False
    assert len(answers) == 0


def test_two_cached_decisions_are_rendered_each_for_itself() -> None:
    answers = Answers()
    one, other = decision("one"), decision("other")
    answers.answer(one)
    body, _ = answers.answer(other)
    assert orjson.loads(body)["choices"][0]["message"]["content"] == "other"
    assert len(answers) == 2


def test_the_least_recently_served_rendering_is_dropped_first() -> None:
    answers = Answers(size=2)
    kept, dropped, new = decision("a"), decision("b"), decision("c")
    _, kept_headers = answers.answer(kept)
    _, dropped_headers = answers.answer(dropped)
    answers.answer(kept)  # served again: now the most recent
    answers.answer(new)
    assert len(answers) == 2
    assert answers.answer(kept)[1] is kept_headers
    assert answers.answer(dropped)[1] is not dropped_headers  # rendered anew


@pytest.mark.parametrize(
    "completion",
    [
        decision('quotes " \\ control \x01 line\u2028sep emoji \U0001f600 ' + "x" * 5000),
        dataclasses.replace(
            decision(cached=False),
            certainty=Unscored(reply="not a digit", mode="logits"),
            action=Action.ESCALATE,
            served_by="large-model-v1",
            escalation_cost=0.0,
            escalation_error="",
        ),
    ],
)
def test_the_body_is_byte_for_byte_the_whole_answer_serialized_at_once(
    completion: Completion,
) -> None:
    body, _ = Answers().answer(completion)
    head = orjson.loads(body)
    whole = {"id": head["id"], "object": "chat.completion", "created": head["created"]}
    assert body == orjson.dumps({**whole, **answer_fields(completion)})
