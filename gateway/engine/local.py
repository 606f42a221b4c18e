"""The local engine: Granite 4.0 Micro and its uncertainty LoRA, one copy of the weights.

The base model answers with the adapter disabled; the certainty is computed with it enabled, on the
same `PeftModel`. Decoding is our own small loop over the model's forward pass (KV cache, left
padding, per-row sampling, stop strings, streaming), so that the batching worker can put several
requests, base rows and adapter rows alike, into one forward pass.

All methods are blocking and must run on the engine's own thread (see `gateway.engine.worker`).
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from gateway.certainty import (
    DIGITS,
    MAX_REPLY_TOKENS,
    REPLY_PREFIX,
    ScoreResult,
    ScoringMode,
    certainty_from_distribution,
    certainty_messages,
    parse_reply,
)
from gateway.engine.base import (
    ChatRequest,
    Document,
    FinishReason,
    Generation,
    Message,
    SamplingParams,
    TextCallback,
)
from gateway.errors import ContextLengthExceeded, ModelLoadError

log = logging.getLogger(__name__)

ADAPTER_NAME = "uncertainty"
BASE_ROWS = "__base__"  # PEFT's name for "no adapter" in a mixed batch

DTypeName = Literal["auto", "float32", "bfloat16", "float16"]


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def cpu_supports_bf16() -> bool:
    """True when the CPU has native bf16 arithmetic (AVX512-BF16 or AMX)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_dtype(dtype: DTypeName, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        if device.type == "cuda" or (device.type == "cpu" and cpu_supports_bf16()):
            return torch.bfloat16
        return torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]


def checkpoint_dtype(config: Any) -> torch.dtype | None:
    """The dtype the checkpoint's weights are stored in, as its config declares it (or None)."""
    declared = getattr(config, "dtype", None)
    if isinstance(declared, str):
        declared = getattr(torch, declared, None)
    return declared if isinstance(declared, torch.dtype) else None


def base_load_plan(
    stored: torch.dtype | None, device: torch.device, dtype: torch.dtype
) -> dict[str, Any]:
    """`from_pretrained` arguments that load the base model with the least peak memory.

    `dtype` in the plan is the dtype the weights are loaded in; when it differs from `dtype`
    (the one to compute in), the caller widens the model in place after loading.

    - Not on the CPU: straight onto the device (`device_map`), in the compute dtype; each
      weight goes from the checkpoint to the device, no whole model is built in host memory.
    - On the CPU, a checkpoint narrower than the compute dtype (bf16 weights, float32 compute on
      a CPU without bf16): loading it converted keeps the whole checkpoint memory-mapped, and
      counted in the process's resident memory, until the last weight is converted (peak:
      float32 model + bf16 file). Read into memory instead (no mmap) in its own dtype, it is then
      widened one parameter at a time: the peak is the float32 model plus one parameter (reading
      holds one checkpoint file twice for a moment, its bytes and its tensors: at most the size
      of the widened model). Costs a little load time: the weights are copied once more.
    - Otherwise, in the compute dtype: an unconverted checkpoint stays memory-mapped (its pages
      are the weights, no copy), and a narrowing conversion keeps only the smaller copy.
    """
    if device.type != "cpu":
        return {"dtype": dtype, "device_map": device}
    if stored is not None and stored.is_floating_point and stored.itemsize < dtype.itemsize:
        return {"dtype": stored, "disable_mmap": True}
    return {"dtype": dtype}


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


@dataclass
class DecodeRow:
    """One sequence in a decoding batch."""

    prompt_ids: list[int]
    sampling: SamplingParams
    adapter: bool
    on_text: TextCallback | None = None
    on_done: Callable[[Generation], None] | None = None
    cancelled: Callable[[], bool] | None = None
    generated: list[int] = field(default_factory=list)
    text: str = ""
    emitted: int = 0
    finish_reason: FinishReason | None = None
    generator: torch.Generator | None = None


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
    ) -> None:
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
        self.digit_ids: list[int] = self._digit_token_ids()
        self.prefix_ids: list[int] = tokenizer.encode(REPLY_PREFIX, add_special_tokens=False)
        self._cache_mergeable: bool | None = None  # known after the first decoding step

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
    ) -> LocalEngine:
        """Load the base model and the adapter from hub ids or local paths (one weight copy)."""
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
            raise ModelLoadError(_load_hint("base model", source.base, exc)) from exc
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
            raise ModelLoadError(_load_hint("adapter", source.adapter, exc)) from exc
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
            model, tokenizer, source=source, scoring_mode=scoring_mode, max_context=max_context
        )

    def _digit_token_ids(self) -> list[int]:
        ids: list[int] = []
        for digit in DIGITS:
            encoded = self.tokenizer.encode(digit, add_special_tokens=False)
            if len(encoded) != 1:
                raise ModelLoadError(
                    f"the tokenizer splits the digit {digit!r} into {len(encoded)} tokens; "
                    "one-pass scoring needs each digit to be one token"
                )
            ids.append(int(encoded[0]))
        return ids

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
        """Token ids of a conversation rendered by the model's own chat template."""
        text = self.tokenizer.apply_chat_template(
            list(messages),
            documents=list(documents) or None,
            add_generation_prompt=generation_prompt,
            tokenize=False,
        )
        ids: list[int] = self.tokenizer.encode(text, add_special_tokens=False)
        return ids

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

    @torch.inference_mode()
    def digit_distributions(self, prompts: Sequence[list[int]]) -> list[list[float]]:
        """One forward pass: the next-token distribution over the ten digits after the prefix.

        Prompts of very different lengths go in separate passes (`length_groups`), so that a
        long prompt does not make every short one pay for its padding.
        """
        rows = [list(p) + self.prefix_ids for p in prompts]
        result: list[list[float]] = [[] for _ in rows]
        for group in length_groups([len(r) for r in rows]):
            for index, probs in zip(group, self._digit_pass([rows[i] for i in group]), strict=True):
                result[index] = probs
        return result

    def _digit_pass(self, rows: list[list[int]]) -> list[list[float]]:
        input_ids, attention, positions = self._left_pad(rows)
        with self._adapters([True] * len(rows)) as extra:
            out = self.model(
                input_ids=input_ids,
                attention_mask=attention,
                position_ids=positions,
                use_cache=False,
                logits_to_keep=1,
                **extra,
            )
        digit_logits = out.logits[:, -1, self.digit_ids].float()
        probs = torch.softmax(digit_logits, dim=-1)
        result: list[list[float]] = probs.cpu().tolist()
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

    def _left_pad(
        self, rows: Sequence[Sequence[int]]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        width = max(len(r) for r in rows)
        input_ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        attention = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            input_ids[i, width - len(row) :] = torch.tensor(row, dtype=torch.long)
            attention[i, width - len(row) :] = 1
        positions = (attention.cumsum(-1) - 1).clamp(min=0)
        return (
            input_ids.to(self.device),
            attention.to(self.device),
            positions.to(self.device),
        )

    def _adapters(self, enabled: Sequence[bool]) -> _AdapterSelection:
        return _AdapterSelection(self.model, enabled)

    @torch.inference_mode()
    def decode(
        self,
        rows: list[DecodeRow],
        *,
        admit: Callable[[int], list[DecodeRow]] | None = None,
        max_rows: int | None = None,
    ) -> list[Generation]:
        """Decode a batch of rows to completion; each row stops on its own conditions.

        A row that finishes (or is cancelled) leaves the batch at once: its `on_done` runs and
        its part of the KV cache is dropped, so it costs nothing more. When `admit` is given it
        is asked between steps for up to `max_rows - running` new rows; those are prefilled and
        join the running batch (continuous batching). Returns every row's result, admitted rows
        after the first ones, in order.
        """
        everyone = list(rows)
        running = self._begin(rows) if rows else None
        limit = max_rows if max_rows is not None else len(rows)
        while True:
            if running is not None:
                running = self._continue(running)
            if admit is not None and (running is None or _kv_layers(running.cache) is not None):
                free = limit - (len(running.rows) if running is not None else 0)
                joining = admit(free) if free > 0 else []
                if joining:
                    everyone.extend(joining)
                    running = self._merge(running, self._begin(joining))
            if running is None:
                return [self._result(row) for row in everyone]

    def _begin(self, rows: list[DecodeRow]) -> _Running | None:
        """Prefill new rows (left padded) and pick their first tokens."""
        for row in rows:
            if row.sampling.greedy:
                continue
            row.generator = torch.Generator(device=self.device)
            seed = row.sampling.seed
            row.generator.manual_seed(seed if seed is not None else random.getrandbits(63))
        # Rows of very different lengths are prefilled apart (padding costs a whole forward
        # pass per padded token), then decode as one batch (padding there costs only attention).
        groups = [list(range(len(rows)))]
        if self._cache_mergeable:
            groups = length_groups([len(r.prompt_ids) for r in rows])
        running: _Running | None = None
        for group in groups:
            chosen = [rows[i] for i in group]
            input_ids, attention, positions = self._left_pad([r.prompt_ids for r in chosen])
            started = self._forward(
                chosen, input_ids, attention, positions[:, -1:], positions, None
            )
            running = self._merge(running, started)
        return running

    def _continue(self, running: _Running) -> _Running | None:
        """One decoding step for every running row."""
        ones = torch.ones((len(running.rows), 1), dtype=torch.long, device=self.device)
        attention = torch.cat([running.attention, ones], dim=-1)
        return self._forward(
            running.rows,
            running.next_ids,
            attention,
            running.positions,
            running.positions,
            running.cache,
        )

    def _forward(
        self,
        rows: list[DecodeRow],
        input_ids: torch.Tensor,
        attention: torch.Tensor,
        last_positions: torch.Tensor,
        positions: torch.Tensor,
        cache: Any,
    ) -> _Running | None:
        """Run the model, advance each row by one token, drop the rows that are done."""
        with self._adapters([r.adapter for r in rows]) as extra:
            out = self.model(
                input_ids=input_ids,
                attention_mask=attention,
                position_ids=positions,
                cache=cache,
                use_cache=True,
                logits_to_keep=1,
                **extra,
            )
        if self._cache_mergeable is None:
            self._cache_mergeable = _kv_layers(out.cache) is not None
        logits = out.logits[:, -1, :].float()
        keep: list[int] = []
        tokens: list[int] = []
        for i, row in enumerate(rows):
            if row.cancelled is not None and row.cancelled():
                continue
            token = self._pick(logits[i], row)
            self._advance(row, token)
            if row.finish_reason is not None:
                if row.on_done is not None:
                    row.on_done(self._result(row))
                continue
            keep.append(i)
            tokens.append(token)
        if not keep:
            return None
        cache = out.cache
        if len(keep) < len(rows):
            index = torch.tensor(keep, dtype=torch.long, device=self.device)
            cache.batch_select_indices(index)
            attention = attention[index]
            last_positions = last_positions[index]
            attention = _trim_left(attention, cache)
        return _Running(
            rows=[rows[i] for i in keep],
            cache=cache,
            attention=attention,
            positions=last_positions + 1,
            next_ids=torch.tensor(tokens, dtype=torch.long, device=self.device)[:, None],
        )

    @staticmethod
    def _merge(running: _Running | None, joining: _Running | None) -> _Running | None:
        """One batch of both: the shorter cache is left padded (masked) to the longer one."""
        if running is None or joining is None:
            return running or joining
        ours, theirs = _kv_layers(running.cache), _kv_layers(joining.cache)
        assert ours is not None
        assert theirs is not None
        width = max(running.attention.shape[1], joining.attention.shape[1])
        for mine, other in zip(ours, theirs, strict=True):
            mine.keys = torch.cat([_pad_left(mine.keys, width), _pad_left(other.keys, width)])
            mine.values = torch.cat([_pad_left(mine.values, width), _pad_left(other.values, width)])
        attention = torch.cat(
            [_pad_left(running.attention, width), _pad_left(joining.attention, width)]
        )
        return _Running(
            rows=running.rows + joining.rows,
            cache=running.cache,
            attention=attention,
            positions=torch.cat([running.positions, joining.positions]),
            next_ids=torch.cat([running.next_ids, joining.next_ids]),
        )

    @staticmethod
    def _result(row: DecodeRow) -> Generation:
        return Generation(
            text=row.text,
            finish_reason=row.finish_reason or "length",
            prompt_tokens=len(row.prompt_ids),
            completion_tokens=len(row.generated),
        )

    def _pick(self, logits: torch.Tensor, row: DecodeRow) -> int:
        sampling = row.sampling
        if sampling.greedy:
            return int(torch.argmax(logits).item())
        probs = torch.softmax(logits / sampling.temperature, dim=-1)
        if sampling.top_p < 1.0:
            sorted_probs, order = torch.sort(probs, descending=True)
            cumulative = torch.cumsum(sorted_probs, dim=-1)
            drop = cumulative - sorted_probs > sampling.top_p
            sorted_probs[drop] = 0.0
            probs = torch.zeros_like(probs).scatter(0, order, sorted_probs)
        return int(torch.multinomial(probs, 1, generator=row.generator).item())

    def _advance(self, row: DecodeRow, token: int) -> None:
        """Record one token: update the text, apply stop conditions, stream what is final."""
        if token == self.eos_id:
            row.finish_reason = "stop"
            self._emit(row, final=True)
            return
        row.generated.append(token)
        row.text = self.tokenizer.decode(row.generated, skip_special_tokens=True)
        for stop in row.sampling.stop:
            at = row.text.find(stop)
            if at >= 0:
                row.text = row.text[:at]
                row.finish_reason = "stop"
        if row.finish_reason is None and len(row.generated) >= row.sampling.max_tokens:
            row.finish_reason = "length"
        if row.finish_reason is None and self._context_full(row):
            row.finish_reason = "length"
        self._emit(row, final=row.finish_reason is not None)

    def _context_full(self, row: DecodeRow) -> bool:
        return len(row.prompt_ids) + len(row.generated) >= self.max_context

    @staticmethod
    def _emit(row: DecodeRow, *, final: bool) -> None:
        """Send the text that can no longer change: not a partial character or stop string."""
        if row.on_text is None:
            return
        end = len(row.text)
        if not final:
            if row.text.endswith("\ufffd"):
                end = len(row.text.rstrip("\ufffd"))
            for stop in row.sampling.stop:
                for k in range(min(len(stop) - 1, end), 0, -1):
                    if row.text[:end].endswith(stop[:k]):
                        end -= k
                        break
        if end > row.emitted:
            row.on_text(row.text[row.emitted : end])
            row.emitted = end


class _AdapterSelection:
    """Turns the adapter on or off for a forward pass: per row when the batch is mixed."""

    def __init__(self, model: Any, enabled: Sequence[bool]) -> None:
        self.model = model
        self.enabled = list(enabled)
        self._context: Any = None

    def __enter__(self) -> dict[str, Any]:
        if all(self.enabled):
            return {}
        if not any(self.enabled):
            self._context = self.model.disable_adapter()
            self._context.__enter__()
            return {}
        return {"adapter_names": [ADAPTER_NAME if on else BASE_ROWS for on in self.enabled]}

    def __exit__(self, *exc: object) -> None:
        if self._context is not None:
            self._context.__exit__(*exc)
            self._context = None


PAD_SLACK = 1.25
"""A prefill group's padded tokens may exceed its real tokens by at most this factor."""


def length_groups(lengths: Sequence[int], slack: float = PAD_SLACK) -> list[list[int]]:
    """Indices grouped for left-padded passes: by length, a new group when padding would exceed
    `slack` times the group's real tokens. Similar lengths stay one group."""
    groups: list[list[int]] = []
    current: list[int] = []
    real = 0
    for index in sorted(range(len(lengths)), key=lambda i: lengths[i]):
        length = lengths[index]
        if current and (len(current) + 1) * length > slack * (real + length):
            groups.append(current)
            current, real = [], 0
        current.append(index)
        real += length
    if current:
        groups.append(current)
    return groups


@dataclass
class _Running:
    """The rows still decoding, their KV cache, mask, and next input token and position."""

    rows: list[DecodeRow]
    cache: Any
    attention: torch.Tensor  # (rows, cached tokens): 0 where a row is left padded
    positions: torch.Tensor  # (rows, 1)
    next_ids: torch.Tensor  # (rows, 1)


def _kv_layers(cache: Any) -> list[Any] | None:
    """The cache's per-layer key/value holders, when they are plain tensors we may reshape."""
    layers = getattr(cache, "layers", None)
    if not layers:
        return None
    for layer in layers:
        keys = getattr(layer, "keys", None)
        if not isinstance(keys, torch.Tensor) or keys.dim() != 4:
            return None
    return list(layers)


def _pad_left(tensor: torch.Tensor, width: int) -> torch.Tensor:
    """Zeros on the left of the sequence dimension (-1 for a mask, -2 for keys/values)."""
    dim = -1 if tensor.dim() == 2 else -2
    missing = width - tensor.shape[dim]
    if missing <= 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = missing
    return torch.cat([tensor.new_zeros(shape), tensor], dim=dim)


def _trim_left(attention: torch.Tensor, cache: Any) -> torch.Tensor:
    """Drop the leading columns that no remaining row attends to (padding of departed rows)."""
    layers = _kv_layers(cache)
    if layers is None:
        return attention
    used = attention.any(dim=0).nonzero()
    first = int(used[0].item()) if used.numel() else 0
    if first == 0:
        return attention
    for layer in layers:
        layer.keys = layer.keys[:, :, first:, :]
        layer.values = layer.values[:, :, first:, :]
    return attention[:, first:]


def _load_hint(what: str, where: str, exc: BaseException) -> str:
    local = os.path.exists(where)
    if not local and (where.startswith((os.sep, ".", "~")) or os.sep + os.sep in where):
        return f"could not load the {what}: no such folder {where!r}"
    hint = (
        "check that the folder holds a Hugging Face model"
        if local
        else "the Hugging Face hub could not be reached or has no such repository; "
        "download it elsewhere and point the config at the local folder "
        "(model.base / model.adapter, or GATEWAY_MODEL__BASE / GATEWAY_MODEL__ADAPTER)"
    )
    first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return f"could not load the {what} from {where!r}: {first_line}; {hint}"
