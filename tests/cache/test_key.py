from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest

from gateway.cache.key import cache_key, is_cacheable, policy_of
from gateway.types import SamplingParams


def _inputs(**changes: Any) -> dict[str, Any]:
    inputs: dict[str, Any] = {
        "policy_name": "cascade",
        "policy_hash": "p1",
        "model_id": "granite@abc+uncertainty@def",
        "scoring_mode": "logits",
        "messages": [{"role": "user", "content": "What is the capital of France?"}],
        "documents": [{"doc_id": "1", "text": "Paris is the capital."}],
        "params": {"temperature": 0, "max_tokens": 64, "top_p": 1.0},
        "tenant": "key-1",
    }
    inputs.update(changes)
    return inputs


def test_key_starts_with_policy_name_then_sha256() -> None:
    key = cache_key(**_inputs())
    policy, _, digest = key.partition(":")
    assert policy == "cascade"
    assert len(digest) == 64
    assert int(digest, 16) >= 0


def test_same_inputs_give_same_key() -> None:
    assert cache_key(**_inputs()) == cache_key(**_inputs())


@pytest.mark.parametrize(
    "change",
    [
        {"policy_hash": "p2"},
        {"model_id": "granite@abc+uncertainty@xyz"},
        {"model_id": "granite@zzz+uncertainty@def"},
        {"scoring_mode": "generate"},
        {"messages": [{"role": "user", "content": "What is the capital of Spain?"}]},
        {"messages": [{"role": "system", "content": "What is the capital of France?"}]},
        {"documents": []},
        {"documents": [{"doc_id": "2", "text": "Paris is the capital."}]},
        {"params": {"temperature": 0, "max_tokens": 65, "top_p": 1.0}},
        {"params": {"temperature": 0, "max_tokens": 64, "top_p": 0.9}},
        {"params": {"temperature": 0, "max_tokens": 64, "top_p": 1.0, "seed": 7}},
        {"params": {"temperature": 0, "max_tokens": 64, "top_p": 1.0, "stop": ["\n"]}},
        {"tenant": "key-2"},
        {"tenant": None},
    ],
    ids=lambda change: next(iter(change)),
)
def test_each_decision_input_changes_the_key(change: dict[str, Any]) -> None:
    assert cache_key(**_inputs(**change)) != cache_key(**_inputs())


def test_policy_name_changes_the_key_and_its_prefix() -> None:
    key = cache_key(**_inputs(policy_name="guard"))
    assert key.startswith("guard:")
    assert key.split(":")[1] != cache_key(**_inputs()).split(":")[1]


def test_dict_key_order_does_not_change_the_key() -> None:
    reordered = _inputs(
        messages=[{"content": "What is the capital of France?", "role": "user"}],
        params={"top_p": 1.0, "max_tokens": 64, "temperature": 0},
    )
    assert cache_key(**reordered) == cache_key(**_inputs())


def test_null_parameter_is_the_same_as_an_absent_one() -> None:
    with_null = _inputs(params={"temperature": 0, "max_tokens": 64, "top_p": 1.0, "seed": None})
    assert cache_key(**with_null) == cache_key(**_inputs())


def test_whitespace_inside_message_text_is_kept() -> None:
    spaced = _inputs(messages=[{"role": "user", "content": "What is the  capital of France?"}])
    trailing = _inputs(messages=[{"role": "user", "content": "What is the capital of France? "}])
    assert cache_key(**spaced) != cache_key(**_inputs())
    assert cache_key(**trailing) != cache_key(**_inputs())


def test_policy_of_recovers_a_name_containing_colons() -> None:
    assert policy_of(cache_key(**_inputs(policy_name="team:a"))) == "team:a"


def test_non_json_input_is_refused() -> None:
    with pytest.raises(TypeError):
        cache_key(**_inputs(params={"temperature": object()}))


@pytest.mark.parametrize(
    ("temperature", "seed", "opts_in", "expected"),
    [
        (0, None, False, True),
        (0.0, None, False, True),
        (0.7, 42, False, True),
        (0.7, None, False, False),
        (None, None, False, False),
        (0.7, None, True, True),
    ],
)
def test_only_deterministic_requests_are_cacheable_unless_policy_opts_in(
    temperature: float | None, seed: int | None, opts_in: bool, expected: bool
) -> None:
    assert is_cacheable(temperature, seed, opts_in) is expected


def test_sampling_params_give_every_field_to_the_key() -> None:
    # `as_dict` is written out by hand for speed: a field added later must not be left out of it.
    sampling = SamplingParams(max_tokens=9, temperature=0.5, top_p=0.9, stop=("a", "b"), seed=3)
    assert sampling.as_dict() == json.loads(json.dumps(dataclasses.asdict(sampling)))


def test_a_document_beyond_64_bit_integers_still_gets_a_stable_key() -> None:
    big = cache_key(**_inputs(documents=[{"n": 2**70}]))
    assert big == cache_key(**_inputs(documents=[{"n": 2**70}]))
    assert big != cache_key(**_inputs(documents=[{"n": 2**70 + 1}]))
