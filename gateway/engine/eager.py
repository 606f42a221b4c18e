"""The eager decoder: the model's own forward pass (transformers + PEFT), a dynamic KV cache.

The CPU path, and the GPU path when CUDA graphs are off. Rows are left padded; the adapter is
chosen per row through PEFT (`adapter_names`) when a batch mixes both kinds. A row that finishes
leaves the batch at once (its part of the cache is dropped); rows that join are prefilled apart
and merged into the running batch (continuous batching).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from gateway.engine.rows import DecodeRow, RowStepper, length_groups
from gateway.types import Generation

ADAPTER_NAME = "uncertainty"
BASE_ROWS = "__base__"  # PEFT's name for "no adapter" in a mixed batch


class EagerDecoder:
    """Decodes and scores with `model` (a `PeftModel` whose adapter is `ADAPTER_NAME`)."""

    def __init__(self, model: Any, stepper: RowStepper, *, pad_id: int) -> None:
        self.model = model
        self.stepper = stepper
        self.pad_id = pad_id
        self.device: torch.device = next(model.parameters()).device
        self._cache_mergeable: bool | None = None  # known after the first decoding step
        self._cache_kwarg = _cache_keyword(model)

    # ----------------------------------------------------------------- scoring

    @torch.inference_mode()
    def last_logits(
        self, rows: Sequence[Sequence[int]], adapter: bool, token_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The next-token logits after each row (rows, vocabulary; only `token_ids` when
        given), one left-padded pass."""
        input_ids, attention, positions = self._left_pad(rows)
        out = self._run([adapter] * len(rows), input_ids, attention, positions, use_cache=False)
        logits: torch.Tensor = out.logits[:, -1, :]
        return logits if token_ids is None else logits[:, token_ids]

    def _run(
        self,
        adapters: list[bool],
        input_ids: torch.Tensor,
        attention: torch.Tensor,
        positions: torch.Tensor,
        *,
        use_cache: bool,
        cache: Any = None,
    ) -> Any:
        """One forward pass, each row with its adapter on or off, logits of the last position
        only; the model's output (logits and, with `use_cache`, the KV cache)."""
        caching = {self._cache_kwarg: cache} if use_cache else {}
        with _AdapterSelection(self.model, adapters) as extra:
            return self.model(
                input_ids=input_ids,
                attention_mask=attention,
                position_ids=positions,
                use_cache=use_cache,
                logits_to_keep=1,
                **caching,
                **extra,
            )

    # ---------------------------------------------------------------- decoding

    @torch.inference_mode()
    def decode(
        self,
        rows: list[DecodeRow],
        *,
        admit: Callable[[int], list[DecodeRow]] | None = None,
        max_rows: int | None = None,
    ) -> list[Generation]:
        """Decode a batch of rows to completion; each row stops on its own conditions.

        When `admit` is given it is asked between steps for up to `max_rows - running` new rows;
        those are prefilled and join the running batch. Returns every row's result, admitted
        rows after the first ones, in order.
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
                return [row.result() for row in everyone]

    def _begin(self, rows: list[DecodeRow]) -> _Running | None:
        """Prefill new rows (left padded) and pick their first tokens."""
        self.stepper.seed(rows, self.device)
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
        adapters = [r.adapter for r in rows]
        out = self._run(adapters, input_ids, attention, positions, use_cache=True, cache=cache)
        new_cache = _output_cache(out)
        if self._cache_mergeable is None:
            self._cache_mergeable = _kv_layers(new_cache) is not None
        logits = out.logits[:, -1, :].float()
        keep = self.stepper.step(rows, logits)
        if not keep:
            return None
        kept_tokens = [rows[i].generated[-1] for i in keep]  # a kept row took its token
        if len(keep) < len(rows):
            index = torch.tensor(keep, dtype=torch.long, device=self.device)
            new_cache.batch_select_indices(index)
            attention = attention[index]
            last_positions = last_positions[index]
            attention = _trim_left(attention, new_cache)
        return _Running(
            rows=[rows[i] for i in keep],
            cache=new_cache,
            attention=attention,
            positions=last_positions + 1,
            next_ids=torch.tensor(kept_tokens, dtype=torch.long, device=self.device)[:, None],
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


@dataclass
class _Running:
    """The rows still decoding, their KV cache, mask, and next input token and position."""

    rows: list[DecodeRow]
    cache: Any
    attention: torch.Tensor  # (rows, cached tokens): 0 where a row is left padded
    positions: torch.Tensor  # (rows, 1)
    next_ids: torch.Tensor  # (rows, 1)


def _cache_keyword(model: Any) -> str:
    """What this transformers version calls the KV cache argument: `cache` (5.2x on) or
    `past_key_values` (earlier 5.x)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    parameters = inspect.signature(type(base).forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"


def _output_cache(out: Any) -> Any:
    """The KV cache of a forward pass's output, under either of its names."""
    cache = getattr(out, "cache", None)
    return cache if cache is not None else getattr(out, "past_key_values", None)


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
