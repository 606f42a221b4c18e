"""The local engine: Granite 4.0 Micro and its uncertainty LoRA, one copy of the weights.

The base model answers with the adapter disabled; the certainty is computed with it enabled, on the
same `PeftModel`. This module loads the model and builds prompts; a decoder runs it, with our own
decoding loop (per-row sampling, stop strings, streaming: `gateway.engine.rows`) so that the
batching worker can put several requests, base rows and adapter rows alike, into one pass:

- `EagerDecoder` (`gateway.engine.eager`): the model's own forward, a dynamic KV cache. The CPU
  path, and the GPU path with `engine.cuda_graphs: false`.
- `StaticDecoder` (`gateway.engine.static`): a preallocated KV cache and, on CUDA, captured CUDA
  graphs for every decoding step (the default on a CUDA device).

All methods are blocking and must run on the engine's own thread (see `gateway.engine.worker`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import torch

from gateway.certainty import (
    MAX_REPLY_TOKENS,
    REPLY_PREFIX,
    ScoreResult,
    ScoringMode,
    certainty_from_distribution,
    certainty_messages,
    parse_reply,
)
from gateway.engine.eager import ADAPTER_NAME, EagerDecoder
from gateway.engine.loading import (
    DTypeName,
    base_load_plan,
    checkpoint_dtype,
    load_hint,
    resolve_device,
    resolve_dtype,
)
from gateway.engine.prompts import digit_token_ids, render_prompt
from gateway.engine.rows import DecodeRow, RowStepper, length_groups
from gateway.errors import ContextLengthExceeded, ModelLoadError
from gateway.types import (
    ChatRequest,
    Document,
    Generation,
    Message,
    SamplingParams,
    TextCallback,
)

if TYPE_CHECKING:
    from gateway.engine.static import StaticDecoder

log = logging.getLogger(__name__)

__all__ = ["ADAPTER_NAME", "DecodeRow", "LocalEngine", "ModelSource", "length_groups"]

DecoderName = Literal["auto", "eager", "static"]
STATIC_MAX_CONTEXT = 4096
"""Tokens per row of the static decoder's KV cache unless `engine.max_context` says otherwise."""


@dataclass(frozen=True)
class ModelSource:
    """Where the base model and the adapter come from: hub ids or local paths."""

    base: str
    adapter: str
    adapter_subfolder: str | None = None
    base_revision: str | None = None
    adapter_revision: str | None = None
    name: str | None = None  # what `served_by` reports (not part of the identity)

    def identity(self) -> str:
        sub = f"/{self.adapter_subfolder}" if self.adapter_subfolder else ""
        return (
            f"{self.base}@{self.base_revision or 'default'}"
            f"+{self.adapter}{sub}@{self.adapter_revision or 'default'}"
        )


class LocalEngine:
    """Granite base + uncertainty adapter on one `PeftModel`, running in this process."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        source: ModelSource,
        scoring_mode: ScoringMode = "logits",
        max_context: int | None = None,
        decoder: DecoderName = "eager",
        cuda_graphs: bool = True,
        max_batch_size: int = 8,
        static_context: int | None = None,
    ) -> None:
        """`decoder`: "auto" is the static one (with CUDA graphs unless `cuda_graphs` is off) on
        a CUDA device and the eager one elsewhere. The static decoder holds `max_batch_size`
        rows of `static_context` tokens (`STATIC_MAX_CONTEXT` by default), which also bounds
        `max_context`."""
        self.model = model
        self.tokenizer = tokenizer
        self.source = source
        self._scoring_mode: ScoringMode = scoring_mode
        self.device: torch.device = next(model.parameters()).device
        config = model.get_base_model().config
        self.max_context: int = max_context or int(config.max_position_embeddings)
        self.eos_id: int = int(tokenizer.eos_token_id)
        pad = tokenizer.pad_token_id
        self.pad_id: int = int(pad) if pad is not None else self.eos_id
        self.digit_ids: list[int] = list(digit_token_ids(tokenizer))
        self._digit_index = torch.tensor(self.digit_ids, device=self.device)
        self.prefix_ids: list[int] = tokenizer.encode(REPLY_PREFIX, add_special_tokens=False)
        if decoder == "auto":
            decoder = "static" if self.device.type == "cuda" else "eager"
        if decoder == "static":
            self.max_context = min(self.max_context, static_context or STATIC_MAX_CONTEXT)
        stepper = RowStepper(tokenizer, eos_id=self.eos_id, max_context=self.max_context)
        self.decoder: EagerDecoder | StaticDecoder = EagerDecoder(
            model, stepper, pad_id=self.pad_id
        )
        if decoder == "static":
            from gateway.engine.granite import GraniteWeights
            from gateway.engine.static import StaticDecoder

            self.decoder = StaticDecoder(
                GraniteWeights.from_model(model),
                stepper,
                pad_id=self.pad_id,
                max_rows=max_batch_size,
                max_context=self.max_context,
                graphs=cuda_graphs,
            )

    # ----------------------------------------------------------------- loading

    @classmethod
    def load(
        cls,
        source: ModelSource,
        *,
        device: str = "auto",
        dtype: DTypeName = "auto",
        scoring_mode: ScoringMode = "logits",
        max_context: int | None = None,
        **decoding: Any,
    ) -> LocalEngine:
        """Load the base model and the adapter from hub ids or local paths (one weight copy);
        `decoding`: the constructor's decoder arguments (`decoder`, `cuda_graphs`, ...)."""
        from peft import PeftModel
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

        torch_device = resolve_device(device)
        torch_dtype = resolve_dtype(dtype, torch_device)
        try:
            tokenizer = AutoTokenizer.from_pretrained(source.base, revision=source.base_revision)
            config = AutoConfig.from_pretrained(source.base, revision=source.base_revision)
            plan = base_load_plan(checkpoint_dtype(config), torch_device, torch_dtype)
            base = AutoModelForCausalLM.from_pretrained(
                source.base, revision=source.base_revision, config=config, **plan
            )
        except (OSError, ValueError) as exc:
            raise ModelLoadError(load_hint("base model", source.base, exc)) from exc
        if plan["dtype"] != torch_dtype:
            # Widened in place, one parameter at a time: the peak is the widened model plus
            # one parameter, not the widened model plus the whole checkpoint.
            base.to(torch_dtype)
            base.config.dtype = torch_dtype
        kwargs: dict[str, Any] = {}
        if source.adapter_subfolder:
            kwargs["subfolder"] = source.adapter_subfolder
        try:
            model = PeftModel.from_pretrained(
                base,
                source.adapter,
                adapter_name=ADAPTER_NAME,
                revision=source.adapter_revision,
                **kwargs,
            )
        except (OSError, ValueError, RuntimeError, KeyError) as exc:
            raise ModelLoadError(load_hint("adapter", source.adapter, exc)) from exc
        model.eval()
        log.info(
            "model loaded",
            extra={
                "model": source.identity(),
                "device": str(torch_device),
                "dtype": str(torch_dtype),
            },
        )
        return cls(
            model,
            tokenizer,
            source=source,
            scoring_mode=scoring_mode,
            max_context=max_context,
            **decoding,
        )

    # --------------------------------------------------------------- interface

    @property
    def model_id(self) -> str:
        return self.source.identity()

    @property
    def served_name(self) -> str:
        """What `served_by` reports for a local answer: the model's name, else its id or folder."""
        return self.source.name or self.source.base

    @property
    def scoring_mode(self) -> ScoringMode:
        return self._scoring_mode

    def render(
        self,
        messages: Sequence[dict[str, str]],
        documents: Sequence[Document] = (),
        *,
        generation_prompt: bool = True,
    ) -> list[int]:
        """Token ids of a conversation rendered by the model's own chat template; client text
        never becomes a control token (`gateway.engine.prompts`)."""
        return render_prompt(
            self.tokenizer, messages, documents, generation_prompt=generation_prompt
        )

    def count_prompt_tokens(self, request: ChatRequest) -> int:
        return len(self.render(request.message_dicts(), request.documents))

    def answer_prompt(self, request: ChatRequest) -> list[int]:
        ids = self.render(request.message_dicts(), request.documents)
        if len(ids) + 1 > self.max_context:
            raise ContextLengthExceeded(
                f"the conversation is {len(ids)} tokens; this model's context is "
                f"{self.max_context} tokens",
                param="messages",
            )
        return ids

    def certainty_prompt(
        self, messages: Sequence[Message], answer: str, documents: Sequence[Document] = ()
    ) -> list[int]:
        """The adapter's prompt: request + answer + `<certainty>` turn, with the same documents."""
        conversation = certainty_messages([m.as_dict() for m in messages], answer)
        ids = self.render(conversation, documents)
        if len(ids) + len(self.prefix_ids) + MAX_REPLY_TOKENS > self.max_context:
            raise ContextLengthExceeded(
                "the conversation and its answer do not fit the model's context for scoring",
                param="messages",
            )
        return ids

    def generate(self, request: ChatRequest, on_text: TextCallback | None = None) -> Generation:
        row = DecodeRow(
            self.answer_prompt(request), request.sampling, adapter=False, on_text=on_text
        )
        return self.decode([row])[0]

    def score(
        self,
        messages: Sequence[Message],
        answer: str,
        documents: Sequence[Document] = (),
        mode: ScoringMode | None = None,
    ) -> ScoreResult:
        prompt = self.certainty_prompt(messages, answer, documents)
        if (mode or self._scoring_mode) == "generate":
            return self.score_generate([prompt])[0]
        return self.score_logits([prompt])[0]

    # ----------------------------------------------------------------- scoring

    def digit_distributions(self, prompts: Sequence[list[int]]) -> list[list[float]]:
        """One forward pass: the next-token distribution over the ten digits after the prefix.

        Prompts of very different lengths go in separate passes (`length_groups`), so that a
        long prompt does not make every short one pay for its padding.
        """
        rows = [list(p) + self.prefix_ids for p in prompts]
        result: list[list[float]] = [[] for _ in rows]
        for group in length_groups([len(r) for r in rows]):
            logits = self.decoder.last_logits(
                [rows[i] for i in group], adapter=True, token_ids=self._digit_index
            )
            probs = torch.softmax(logits.float(), dim=-1).cpu().tolist()
            for index, dist in zip(group, probs, strict=True):
                result[index] = dist
        return result

    def score_logits(self, prompts: Sequence[list[int]]) -> list[ScoreResult]:
        return [
            certainty_from_distribution(dist, mode="logits")
            for dist in self.digit_distributions(prompts)
        ]

    def score_generate(self, prompts: Sequence[list[int]]) -> list[ScoreResult]:
        greedy = SamplingParams(max_tokens=MAX_REPLY_TOKENS, temperature=0.0)
        rows = [DecodeRow(list(p), greedy, adapter=True) for p in prompts]
        return [parse_reply(g.text) for g in self.decode(rows)]

    # ---------------------------------------------------------------- decoding

    def decode(
        self,
        rows: list[DecodeRow],
        *,
        admit: Callable[[int], list[DecodeRow]] | None = None,
        max_rows: int | None = None,
    ) -> list[Generation]:
        """Decode a batch of rows to completion; each row stops on its own conditions.

        A row that finishes (or is cancelled) leaves the batch at once: its `on_done` runs and
        it costs nothing more. When `admit` is given it is asked between steps for up to
        `max_rows - running` new rows; those are prefilled and join the running batch
        (continuous batching). Returns every row's result, admitted rows after the first ones,
        in order.
        """
        return self.decoder.decode(rows, admit=admit, max_rows=max_rows)
