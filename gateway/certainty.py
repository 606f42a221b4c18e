"""The certainty signal: the adapter's prompt, and digit distributions turned into confidences.

The uncertainty adapter answers `{"score": "X"}` with X a digit 0-9; the confidence of digit X is
0.1 * X + 0.05. Everything here is pure (no model, no torch) so the local engine, the remote engine
and the evaluation tools share one definition.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

CERTAINTY_TURN = "<certainty>"
"""The whole content of the user turn that asks the adapter for its rating."""

REPLY_PREFIX = '{"score": "'
"""What the adapter's reply always starts with; forced in `logits` mode."""

MAX_REPLY_TOKENS = 15
"""IBM's runtime lets the adapter generate at most this many tokens."""

DIGITS = tuple(str(d) for d in range(10))

SCORE_PATTERN = re.compile(r'\{[^}]*"score"\s*:\s*"?(\d)"?[^}]*\}')
"""The seed's parser for a generated reply (see granite.md)."""

ScoringMode = Literal["logits", "generate"]


def digit_confidence(digit: int) -> float:
    """The calibrated confidence of one digit: 0.1 * digit + 0.05."""
    if not 0 <= digit <= 9:
        raise ValueError(f"a certainty digit is 0-9, got {digit}")
    return round(0.1 * digit + 0.05, 10)


@dataclass(frozen=True)
class Certainty:
    """A scored answer: the adapter's digit and what it means."""

    score: int
    confidence: float
    expected_confidence: float
    distribution: tuple[float, ...] | None
    mode: ScoringMode

    def as_dict(self) -> dict[str, Any]:
        return {
            "score": self.score,
            "confidence": self.confidence,
            "expected_confidence": self.expected_confidence,
            "distribution": list(self.distribution) if self.distribution is not None else None,
            "mode": self.mode,
        }


@dataclass(frozen=True)
class Unscored:
    """The adapter replied with something that holds no score (generate mode only)."""

    reply: str
    mode: ScoringMode = "generate"

    def as_dict(self) -> dict[str, Any]:
        return {
            "score": None,
            "confidence": None,
            "expected_confidence": None,
            "distribution": None,
            "mode": self.mode,
            "unscored_reply": self.reply,
        }


ScoreResult = Certainty | Unscored


def certainty_messages(messages: Sequence[Mapping[str, str]], answer: str) -> list[dict[str, str]]:
    """The conversation the adapter rates: the request, the answer, then a `<certainty>` turn."""
    conversation = [{"role": m["role"], "content": m["content"]} for m in messages]
    conversation.append({"role": "assistant", "content": answer})
    conversation.append({"role": "user", "content": CERTAINTY_TURN})
    return conversation


def certainty_from_distribution(
    probabilities: Sequence[float], mode: ScoringMode = "logits"
) -> Certainty:
    """Arg-max digit and expected confidence of a distribution over the ten digits."""
    if len(probabilities) != 10:
        raise ValueError(f"a digit distribution has 10 entries, got {len(probabilities)}")
    total = math.fsum(probabilities)
    if not total > 0:
        raise ValueError("a digit distribution must have positive mass")
    distribution = tuple(p / total for p in probabilities)
    score = max(range(10), key=lambda d: distribution[d])
    expected = math.fsum(p * digit_confidence(d) for d, p in enumerate(distribution))
    return Certainty(
        score=score,
        confidence=digit_confidence(score),
        expected_confidence=expected,
        distribution=distribution,
        mode=mode,
    )


def softmax(logits: Sequence[float]) -> list[float]:
    top = max(logits)
    exps = [math.exp(x - top) for x in logits]
    total = math.fsum(exps)
    return [e / total for e in exps]


def certainty_from_digit_logprobs(
    logprobs: Sequence[float], mode: ScoringMode = "logits"
) -> Certainty:
    """The certainty from the log-probabilities of the ten digit tokens, digit 0 first.

    The softmax over just those ten values: what the local engine computes from the ten digit
    logits (a log-softmax over the whole vocabulary differs from the logits by one constant, so
    the two agree exactly).
    """
    if len(logprobs) != 10:
        raise ValueError(f"one log-probability per digit is needed, got {len(logprobs)}")
    return certainty_from_distribution(softmax(logprobs), mode=mode)


def parse_reply(reply: str) -> ScoreResult:
    """Parse a generated adapter reply with the seed's regex; no match is `Unscored`."""
    match = SCORE_PATTERN.search(reply)
    if match is None:
        return Unscored(reply=reply)
    digit = int(match.group(1))
    confidence = digit_confidence(digit)
    one_hot = tuple(1.0 if d == digit else 0.0 for d in range(10))
    return Certainty(
        score=digit,
        confidence=confidence,
        expected_confidence=confidence,
        distribution=one_hot,
        mode="generate",
    )


@dataclass(frozen=True)
class TopLogprobsCertainty:
    """IBM's runtime rule applied to the `top_logprobs` of the digit position."""

    expected_confidence: float
    distribution: tuple[float, ...] | None
    score: int | None


def certainty_from_top_logprobs(
    top_logprobs: Sequence[Mapping[str, Any]] | Mapping[str, float],
) -> TopLogprobsCertainty:
    """Turn an OpenAI-style `top_logprobs` entry for the digit position into a certainty.

    Accepts the chat shape (a list of `{"token", "logprob"}` objects) or the completions shape
    (a mapping token -> logprob). As IBM's runtime does: take exp(logprob) of each alternative
    whose token is a digit, normalise those weights to sum to 1, and report the expected value
    of 0.1 X + 0.05. When no alternative is a digit, the expected confidence is 0.0 and there is
    no distribution.
    """
    if isinstance(top_logprobs, Mapping):
        pairs = [(str(token), float(lp)) for token, lp in top_logprobs.items()]
    else:
        pairs = [(str(item["token"]), float(item["logprob"])) for item in top_logprobs]
    weights = [0.0] * 10
    for token, logprob in pairs:
        stripped = token.strip()
        if len(stripped) == 1 and stripped in DIGITS:
            weights[int(stripped)] += math.exp(logprob)
    total = math.fsum(weights)
    if total <= 0:
        return TopLogprobsCertainty(expected_confidence=0.0, distribution=None, score=None)
    distribution = tuple(w / total for w in weights)
    expected = math.fsum(p * digit_confidence(d) for d, p in enumerate(distribution))
    score = max(range(10), key=lambda d: distribution[d])
    return TopLogprobsCertainty(
        expected_confidence=expected, distribution=distribution, score=score
    )
