"""The static decoder: a preallocated KV cache, and on CUDA one captured graph per shape.

Each running row owns a slot of the cache (`StaticKV`), the first `n` slots for `n` rows: a row
that leaves is replaced by the last one (its cache copied over), rows that join take the next
free slots and are prefilled there. A decoding step runs `granite.decode_step` over a *bucket* of
slots (the smallest of `batch_buckets` that holds every row; the spare slots compute a dummy
token) attending to a *context bucket* (the smallest of `context_buckets` past every row's
position), so each step has one of a few fixed shapes. On CUDA each shape is captured once at
start-up as a CUDA graph and replayed: one launch instead of ~20 kernels per layer from Python.
A capture that fails leaves that shape and the ones after it eager, and a replay that fails
drops its graph and runs the step eagerly: either way one warning line, and decoding goes on.

Prefill (the prompt, and the one-pass certainty score) runs eagerly through the same functions:
it is a few large matrix products, where launches are a small part of the time.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from gateway.engine import granite
from gateway.engine.granite import GraniteWeights, StaticKV
from gateway.engine.rows import DecodeRow, RowStepper, length_groups
from gateway.errors import ModelLoadError
from gateway.types import Generation

log = logging.getLogger(__name__)

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
SMALLEST_CONTEXT = 256
FREE_MEMORY_SHARE = 0.9
"""The KV cache may take at most this share of the device's free memory at start-up."""


def batch_buckets(max_rows: int) -> tuple[int, ...]:
    return (*(b for b in BATCH_BUCKETS if b < max_rows), max_rows)


def context_buckets(max_context: int) -> tuple[int, ...]:
    sizes = []
    size = SMALLEST_CONTEXT
    while size < max_context:
        sizes.append(size)
        size *= 2
    return (*sizes, max_context)


def smallest(buckets: Sequence[int], at_least: int) -> int:
    return next(b for b in buckets if b >= at_least)


@dataclass
class _Slot:
    """A running row: what it feeds next and where (`position`: tokens already cached)."""

    row: DecodeRow
    position: int
    token: int


@dataclass
class _Graph:
    graph: torch.cuda.CUDAGraph
    ids: torch.Tensor
    positions: torch.Tensor
    gate: torch.Tensor
    logits: torch.Tensor


class StaticDecoder:
    """Decodes and scores through `granite`'s functions over `weights`, `max_rows` slots of
    `max_context` tokens; `graphs`: capture and replay CUDA graphs (CUDA devices only)."""

    def __init__(
        self,
        weights: GraniteWeights,
        stepper: RowStepper,
        *,
        pad_id: int,
        max_rows: int,
        max_context: int,
        graphs: bool,
    ) -> None:
        self.weights = weights
        self.stepper = stepper
        self.pad_id = pad_id
        self.device = weights.device
        self.max_rows = max_rows
        self.max_context = max_context
        self.batch_buckets = batch_buckets(max_rows)
        self.context_buckets = context_buckets(max_context)
        _check_fits(weights, max_rows, max_context)
        self.kv = StaticKV(weights, slots=max_rows, context=max_context)
        self.graphs: dict[tuple[int, int], _Graph] = {}
        self.use_graphs = graphs and self.device.type == "cuda"
        self.steps_replayed = 0
        self.steps_eager = 0
        self.capture_error: str | None = None
        if self.use_graphs:
            self.capture()

    # --------------------------------------------------------------- graphs

    @torch.inference_mode()
    def capture(self) -> None:
        """One CUDA graph per (batch bucket, context bucket), sharing one memory pool. The
        first capture that fails ends capturing: its shape and the ones after it run eagerly."""
        begun = time.perf_counter()
        pool = None
        for rows in self.batch_buckets:
            started = time.perf_counter()
            for context in self.context_buckets:
                try:
                    captured = self._capture(rows, context, pool)
                except Exception as exc:  # an op that cannot be captured, out of memory, ...
                    self.capture_error = f"{type(exc).__name__}: {_first_line(exc)}"
                    log.warning(
                        "CUDA graph capture failed; this and later shapes run eagerly",
                        extra={"rows": rows, "context": context, "error": self.capture_error},
                    )
                    return
                pool = captured.graph.pool()
                self.graphs[(rows, context)] = captured
            log.info(
                "captured decoding graphs",
                extra={
                    "rows": rows,
                    "contexts": list(self.context_buckets),
                    "seconds": round(time.perf_counter() - started, 2),
                },
            )
        log.info(
            "CUDA graphs ready",
            extra={"graphs": len(self.graphs), "seconds": round(time.perf_counter() - begun, 2)},
        )

    def _capture(self, rows: int, context: int, pool: Any) -> _Graph:
        w = self.weights
        ids = torch.full((rows,), self.pad_id, dtype=torch.long, device=self.device)
        positions = torch.zeros(rows, dtype=torch.long, device=self.device)
        gate = torch.zeros((rows, 1, 1), dtype=torch.float32, device=self.device)
        current = torch.cuda.current_stream(self.device)
        side = torch.cuda.Stream(self.device)  # type: ignore[no-untyped-call]
        side.wait_stream(current)
        with torch.cuda.stream(side):  # warm-up: allocations and kernel choices before capture
            for _ in range(2):
                granite.decode_step(w, ids, positions, gate, self.kv, context)
        current.wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph, pool=pool):
                logits = granite.decode_step(w, ids, positions, gate, self.kv, context)
        finally:
            # A capture whose end fails never leaves its capture stream: leave it here.
            torch.cuda.set_stream(current)
        return _Graph(graph, ids, positions, gate, logits)

    # ----------------------------------------------------------------- scoring

    @torch.inference_mode()
    def last_logits(
        self, rows: Sequence[Sequence[int]], adapter: bool, token_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The next-token logits after each row, one right-padded pass (no cache written)."""
        ids, lengths = self._right_pad(rows)
        gate = self._gate([adapter] * len(rows)) if adapter else None
        hidden = granite.prefill(self.weights, ids, gate)
        last = hidden[torch.arange(len(rows), device=self.device), lengths - 1]
        return granite.logits(self.weights, last, token_ids)

    # ---------------------------------------------------------------- decoding

    @torch.inference_mode()
    def decode(
        self,
        rows: list[DecodeRow],
        *,
        admit: Callable[[int], list[DecodeRow]] | None = None,
        max_rows: int | None = None,
    ) -> list[Generation]:
        """Decode rows to completion, as `EagerDecoder.decode` does; rows beyond the slots wait
        for one to be free."""
        everyone = list(rows)
        waiting = list(rows)
        limit = min(max_rows or self.max_rows, self.max_rows)
        running: list[_Slot] = []
        while True:
            free = limit - len(running)
            joining, waiting = waiting[:free], waiting[free:]
            if admit is not None and not waiting and free > len(joining):
                room = free - len(joining)
                admitted = admit(room)
                everyone.extend(admitted)
                joining.extend(admitted[:room])
                waiting.extend(admitted[room:])
            if joining:
                running = self._join(running, joining)
            if not running:
                if waiting:
                    continue
                return [row.result() for row in everyone]
            running = self._step(running)

    def _join(self, running: list[_Slot], joining: list[DecodeRow]) -> list[_Slot]:
        """Prefill `joining` into the slots after `running`, pick their first tokens."""
        self.stepper.seed(joining, self.device)
        w = self.weights
        first = len(running)
        started: list[_Slot | None] = [None] * len(joining)
        for group in length_groups([len(r.prompt_ids) for r in joining]):
            chosen = [joining[i] for i in group]
            ids, lengths = self._right_pad([r.prompt_ids for r in chosen])
            slots = torch.tensor([first + i for i in group], device=self.device)
            gate = self._gate([r.adapter for r in chosen])
            hidden = granite.prefill(w, ids, gate, self.kv, slots)
            last = hidden[torch.arange(len(chosen), device=self.device), lengths - 1]
            logits = granite.logits(w, last)
            for k in self.stepper.step(chosen, logits):
                row = chosen[k]
                started[group[k]] = _Slot(row, len(row.prompt_ids), row.generated[-1])
        # Every joining row was prefilled into slot `first + i`; the ones already done leave.
        return self._compact([*running, *started])

    def _step(self, running: list[_Slot]) -> list[_Slot]:
        count = len(running)
        rows = smallest(self.batch_buckets, count)
        context = smallest(self.context_buckets, max(s.position for s in running) + 1)
        ids = [s.token for s in running] + [self.pad_id] * (rows - count)
        positions = [s.position for s in running] + [0] * (rows - count)
        gates = [s.row.adapter for s in running] + [False] * (rows - count)
        logits = self._run(rows, context, ids, positions, gates)[:count]
        keep = set(self.stepper.step([s.row for s in running], logits))
        after: list[_Slot | None] = []
        for i, slot in enumerate(running):
            if i in keep:
                after.append(_Slot(slot.row, slot.position + 1, slot.row.generated[-1]))
            else:
                after.append(None)
        return self._compact(after)

    def _run(
        self, rows: int, context: int, ids: list[int], positions: list[int], gates: list[bool]
    ) -> torch.Tensor:
        """The logits of one step: the captured graph of this shape, or the step run eagerly."""
        graph = self.graphs.get((rows, context))
        if graph is not None:
            try:
                graph.ids.copy_(torch.tensor(ids), non_blocking=True)
                graph.positions.copy_(torch.tensor(positions), non_blocking=True)
                graph.gate.copy_(self._gate(gates))
                graph.graph.replay()
                self.steps_replayed += 1
                return graph.logits
            except Exception as exc:  # a broken graph: dropped, its steps run eagerly from now
                del self.graphs[(rows, context)]
                log.warning(
                    "CUDA graph replay failed; this shape runs eagerly from now on",
                    extra={
                        "rows": rows,
                        "context": context,
                        "error": f"{type(exc).__name__}: {_first_line(exc)}",
                    },
                )
        self.steps_eager += 1
        return granite.decode_step(
            self.weights,
            torch.tensor(ids, device=self.device),
            torch.tensor(positions, device=self.device),
            self._gate(gates),
            self.kv,
            context,
        )

    def _compact(self, slots: list[_Slot | None]) -> list[_Slot]:
        """The live rows in slots 0..n-1: each hole is filled by the last live row."""
        live = list(slots)
        while True:
            while live and live[-1] is None:
                live.pop()
            if None not in live:
                return [slot for slot in live if slot is not None]
            hole = live.index(None)
            mover = live.pop()
            assert mover is not None
            self.kv.move(len(live), hole, mover.position)
            live[hole] = mover

    def _gate(self, adapter: Sequence[bool]) -> torch.Tensor:
        """1.0 where the adapter is on, (rows, 1, 1), float32 (the LoRA delta's dtype)."""
        flags = torch.tensor(adapter, dtype=torch.float32)
        return flags.to(self.device, non_blocking=True)[:, None, None]

    def _right_pad(self, rows: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        lengths = torch.tensor([len(r) for r in rows])
        return ids.to(self.device), lengths.to(self.device)


def _first_line(exc: BaseException) -> str:
    """The first line of an error's message (CUDA's run to several), at most 200 characters."""
    lines = str(exc).strip().splitlines()
    return lines[0][:200] if lines else ""


def _check_fits(
    weights: GraniteWeights, max_rows: int, max_context: int, free_bytes: int | None = None
) -> None:
    """A clear error when the KV cache cannot fit the device's free memory (`free_bytes`, read
    from the CUDA device when not given; nothing is checked on other devices)."""
    if free_bytes is None:
        if weights.device.type != "cuda":
            return
        free_bytes, _total = torch.cuda.mem_get_info(weights.device)
    needed = StaticKV.nbytes(weights, slots=max_rows, context=max_context)
    if needed > FREE_MEMORY_SHARE * free_bytes:
        raise ModelLoadError(
            f"the KV cache for engine.max_batch_size={max_rows} rows of engine.max_context="
            f"{max_context} tokens needs {needed / 2**30:.1f} GiB; {weights.device} has "
            f"{free_bytes / 2**30:.1f} GiB free after the weights: lower one of the two "
            "(GATEWAY_ENGINE__MAX_BATCH_SIZE, GATEWAY_ENGINE__MAX_CONTEXT)"
        )
