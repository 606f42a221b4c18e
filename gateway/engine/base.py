"""The engine protocols: what the pipeline needs of a model, and what the worker needs of one.

`AsyncEngine` is the pipeline's view: `EngineWorker` (the local model behind its thread) and
`RemoteEngine` (vLLM) satisfy it. `BatchEngine` is the worker's view of a local model, called on
the worker's own thread only: prompts as token ids, one pass for many certainty scores, and a
decoding loop that takes rows and asks for more between steps (`LocalEngine` satisfies it).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from gateway.certainty import ScoreResult, ScoringMode
from gateway.engine.rows import DecodeRow
from gateway.types import ChatRequest, Document, Generation, Message


class AsyncEngine(Protocol):
    """What the pipeline needs of the model."""

    @property
    def model_id(self) -> str:
        """Identifies the base model and adapter revision (used in cache keys)."""
        ...

    @property
    def served_name(self) -> str:
        """What `served_by` reports for a local answer."""
        ...

    @property
    def scoring_mode(self) -> ScoringMode: ...

    async def generate(
        self, request: ChatRequest, on_text: Callable[[str], None] | None = None
    ) -> Generation: ...

    async def score(
        self,
        messages: Sequence[Message],
        answer: str,
        documents: Sequence[Document] = (),
        mode: ScoringMode | None = None,
    ) -> ScoreResult: ...


class BatchEngine(Protocol):
    """What `EngineWorker` needs of a local model; every call runs on the worker's thread."""

    @property
    def model_id(self) -> str: ...

    @property
    def served_name(self) -> str: ...

    @property
    def scoring_mode(self) -> ScoringMode: ...

    def answer_prompt(self, request: ChatRequest) -> list[int]:
        """The answer's prompt as token ids; `ContextLengthExceeded` when it cannot fit."""
        ...

    def certainty_prompt(
        self, messages: Sequence[Message], answer: str, documents: Sequence[Document] = ()
    ) -> list[int]:
        """The adapter's prompt (without the reply prefix) as token ids."""
        ...

    def score_logits(self, prompts: Sequence[list[int]]) -> list[ScoreResult]:
        """One-pass certainties of many prompts."""
        ...

    def decode(
        self,
        rows: list[DecodeRow],
        *,
        admit: Callable[[int], list[DecodeRow]] | None = None,
        max_rows: int | None = None,
    ) -> list[Generation]:
        """Decode rows to completion; `admit(free)` is asked between steps for rows to join."""
        ...
