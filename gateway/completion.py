"""What the pipeline answers: a decided `Completion` (stored in the cache as JSON), its `Usage`,
and the events of a streamed one (`Decided`, then `TextDelta`s, then `Final`)."""

from __future__ import annotations

from dataclasses import dataclass

import orjson

from gateway.certainty import Certainty, ScoreResult, Unscored
from gateway.policy import Action


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def fields(self) -> dict[str, int]:
        """The stored fields (`Usage(**usage.fields())` rebuilds it)."""
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens}

    def as_dict(self) -> dict[str, int]:
        return {**self.fields(), "total_tokens": self.total_tokens}


@dataclass(frozen=True)
class Completion:
    """One decided request: what the client gets and why."""

    text: str
    finish_reason: str
    action: Action
    policy: str
    served_by: str
    certainty: ScoreResult
    confidence: float
    usage: Usage
    local_usage: Usage
    escalation_cost: float | None = None
    escalation_error: str | None = None
    cached: bool = False

    def to_json(self) -> bytes:
        return orjson.dumps(
            {
                "text": self.text,
                "finish_reason": self.finish_reason,
                "action": self.action.value,
                "policy": self.policy,
                "served_by": self.served_by,
                "certainty": self.certainty.as_dict(),
                "confidence": self.confidence,
                "usage": self.usage.fields(),
                "local_usage": self.local_usage.fields(),
                "escalation_cost": self.escalation_cost,
                "escalation_error": self.escalation_error,
            }
        )

    @classmethod
    def from_json(cls, raw: bytes, *, cached: bool = True) -> Completion:
        data = orjson.loads(raw)
        scored = data["certainty"]
        certainty: ScoreResult
        if scored["score"] is None:
            certainty = Unscored(reply=scored.get("unscored_reply", ""), mode=scored["mode"])
        else:
            dist = scored["distribution"]
            certainty = Certainty(
                score=scored["score"],
                confidence=scored["confidence"],
                expected_confidence=scored["expected_confidence"],
                distribution=tuple(dist) if dist is not None else None,
                mode=scored["mode"],
            )
        return cls(
            text=data["text"],
            finish_reason=data["finish_reason"],
            action=Action(data["action"]),
            policy=data["policy"],
            served_by=data["served_by"],
            certainty=certainty,
            confidence=data["confidence"],
            usage=Usage(**data["usage"]),
            local_usage=Usage(**data["local_usage"]),
            escalation_cost=data["escalation_cost"],
            escalation_error=data["escalation_error"],
            cached=cached,
        )


@dataclass(frozen=True)
class TextDelta:
    text: str


@dataclass(frozen=True)
class Decided:
    """The decision, known before any text is sent (for the response headers)."""

    action: Action
    certainty: ScoreResult | None
    confidence: float | None
    cached: bool


@dataclass(frozen=True)
class Final:
    completion: Completion


StreamEvent = Decided | TextDelta | Final


def decided(completion: Completion) -> Decided:
    return Decided(
        action=completion.action,
        certainty=completion.certainty,
        confidence=completion.confidence,
        cached=completion.cached,
    )


def replay(completion: Completion) -> tuple[Decided, TextDelta, Final]:
    """A decision known in full (a hit, a withheld or local answer, a fallback) as stream
    events: the decision, the whole text at once, the end."""
    return decided(completion), TextDelta(completion.text), Final(completion)
