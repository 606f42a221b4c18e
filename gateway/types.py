"""The request types every room shares: a conversation, its sampling settings, an answer.

The wire schemas build them, the pipeline passes them on, engines and escalation read them,
cache keys hash them. They import nothing of the gateway.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

FinishReason = Literal["stop", "length"]
Role = Literal["system", "user", "assistant"]


@dataclass(frozen=True)
class Message:
    role: Role
    content: str

    def as_dict(self) -> dict[str, str]:
        return {"role": self.role, "content": self.content}


Document = Mapping[str, Any]


GREEDY_BELOW = 1e-5
"""Temperatures below this decode greedily."""


@dataclass(frozen=True)
class SamplingParams:
    """Generation settings; temperature 0 is greedy decoding."""

    max_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None

    def as_dict(self) -> dict[str, Any]:
        """Every field, as plain JSON values (what `dataclasses.asdict` gives, at a tenth of
        the cost: it is on every request's cache key)."""
        return {
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "stop": list(self.stop),
            "seed": self.seed,
        }

    def openai_kwargs(self) -> dict[str, Any]:
        """The settings as OpenAI Chat Completions arguments (`stop` and `seed` only when set)."""
        kwargs: dict[str, Any] = {
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
        }
        if self.stop:
            kwargs["stop"] = list(self.stop)
        if self.seed is not None:
            kwargs["seed"] = self.seed
        return kwargs

    @property
    def greedy(self) -> bool:
        # Below this, logits divided by the temperature overflow to inf (then NaN probabilities);
        # sampling that cold picks the most likely token anyway.
        return self.temperature < GREEDY_BELOW


@dataclass(frozen=True)
class Generation:
    text: str
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True)
class ChatRequest:
    """One conversation to answer: messages, RAG documents and sampling settings."""

    messages: tuple[Message, ...]
    documents: tuple[Document, ...] = ()
    sampling: SamplingParams = field(default_factory=SamplingParams)

    def message_dicts(self) -> list[dict[str, str]]:
        return [m.as_dict() for m in self.messages]


TextCallback = Callable[[str], None]
"""Receives each new piece of generated text, in order, from the engine's thread."""
