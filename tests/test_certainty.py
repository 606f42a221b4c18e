"""The certainty math: digits, distributions, the reply parser and IBM's top_logprobs rule."""

from __future__ import annotations

import math

import pytest

from gateway.certainty import (
    CERTAINTY_TURN,
    Certainty,
    Unscored,
    certainty_from_distribution,
    certainty_from_top_logprobs,
    certainty_messages,
    digit_confidence,
    parse_reply,
    softmax,
)


@pytest.mark.parametrize(
    ("digit", "confidence"),
    [(d, 0.1 * d + 0.05) for d in range(10)],
)
def test_each_digit_maps_to_its_calibrated_confidence(digit: int, confidence: float) -> None:
    assert f"{confidence:.2f}".endswith("5")
    assert digit_confidence(digit) == pytest.approx(confidence, abs=1e-12)


def test_a_digit_outside_0_to_9_is_refused() -> None:
    with pytest.raises(ValueError, match="0-9"):
        digit_confidence(10)


def test_distribution_gives_argmax_score_and_expected_confidence() -> None:
    probabilities = [0.0] * 10
    probabilities[8] = 0.5
    probabilities[9] = 0.5
    result = certainty_from_distribution(probabilities)
    assert result.score == 8  # ties go to the lower digit
    assert result.confidence == pytest.approx(0.85)
    assert result.expected_confidence == pytest.approx(0.5 * 0.85 + 0.5 * 0.95)
    assert result.distribution is not None
    assert math.fsum(result.distribution) == pytest.approx(1.0)


def test_distribution_is_normalised_when_given_unnormalised_weights() -> None:
    result = certainty_from_distribution([2.0] * 10)
    assert result.distribution == pytest.approx([0.1] * 10)
    assert result.expected_confidence == pytest.approx(0.5)


def test_softmax_sums_to_one_and_keeps_order() -> None:
    probs = softmax([1.0, 3.0, 2.0])
    assert math.fsum(probs) == pytest.approx(1.0)
    assert probs[1] > probs[2] > probs[0]


def test_certainty_conversation_appends_answer_and_certainty_turn() -> None:
    conversation = certainty_messages([{"role": "user", "content": "Q?"}], "A.")
    assert conversation == [
        {"role": "user", "content": "Q?"},
        {"role": "assistant", "content": "A."},
        {"role": "user", "content": CERTAINTY_TURN},
    ]


@pytest.mark.parametrize(
    ("reply", "digit"),
    [
        ('{"score": "7"}', 7),
        ('{ "score" : "3" }', 3),
        ('{"score": 5}', 5),
        ('{"score":"0"}', 0),
        ('{"reason": "fine", "score": "9"}', 9),
        ('{"score": "4", "extra": true}', 4),
        ('noise before {"score": "2"} and after', 2),
        ('{"score": "12"}', 1),  # the seed's regex reads the first digit; kept for parity
    ],
)
def test_reply_parser_reads_the_digit_from_odd_but_valid_replies(reply: str, digit: int) -> None:
    result = parse_reply(reply)
    assert isinstance(result, Certainty)
    assert result.score == digit
    assert result.mode == "generate"
    assert result.expected_confidence == pytest.approx(digit_confidence(digit))


@pytest.mark.parametrize(
    "reply",
    ["", "garbage", '{"score": "high"}', '{"confidence": "7"}', '"score": "7"', '{"score": ""}'],
)
def test_reply_parser_returns_unscored_for_replies_without_a_score(reply: str) -> None:
    result = parse_reply(reply)
    assert isinstance(result, Unscored)
    assert result.reply == reply
    assert result.as_dict()["score"] is None


def test_top_logprobs_follow_ibm_rule_normalising_digit_alternatives() -> None:
    top = [
        {"token": "8", "logprob": math.log(0.6)},
        {"token": "9", "logprob": math.log(0.2)},
        {"token": "x", "logprob": math.log(0.15)},  # not a digit: ignored
        {"token": "7", "logprob": math.log(0.05)},
    ]
    result = certainty_from_top_logprobs(top)
    total = 0.6 + 0.2 + 0.05
    expected = (0.6 * 0.85 + 0.2 * 0.95 + 0.05 * 0.75) / total
    assert result.expected_confidence == pytest.approx(expected)
    assert result.distribution is not None
    assert result.distribution[8] == pytest.approx(0.6 / total)
    assert math.fsum(result.distribution) == pytest.approx(1.0)
    assert result.score == 8


def test_top_logprobs_accepts_the_completions_mapping_shape() -> None:
    result = certainty_from_top_logprobs({"3": math.log(0.5), "4": math.log(0.5), '"': -1.0})
    assert result.expected_confidence == pytest.approx(0.5 * 0.35 + 0.5 * 0.45)


def test_top_logprobs_without_any_digit_alternative_reports_zero() -> None:
    result = certainty_from_top_logprobs(
        [{"token": "a", "logprob": -0.1}, {"token": "10", "logprob": -2.0}]
    )
    assert result.expected_confidence == 0.0
    assert result.distribution is None
    assert result.score is None
