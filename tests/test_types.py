"""The request types every engine and the escalator share."""

from __future__ import annotations

from gateway.types import SamplingParams


def test_openai_arguments_carry_stop_and_seed_only_when_set() -> None:
    assert SamplingParams().openai_kwargs() == {
        "max_tokens": 256,
        "temperature": 0.0,
        "top_p": 1.0,
    }
    sampling = SamplingParams(max_tokens=8, temperature=0.7, top_p=0.9, stop=("\n",), seed=3)
    assert sampling.openai_kwargs() == {
        "max_tokens": 8,
        "temperature": 0.7,
        "top_p": 0.9,
        "stop": ["\n"],
        "seed": 3,
    }
