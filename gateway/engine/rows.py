"""One decoding row and what happens to it each step, whichever decoder runs the model.

A decoder (`gateway.engine.eager` or `gateway.engine.static`) turns the model's last-position
logits into one token per row with `RowStepper.pick_all`, then hands each token to
`RowStepper.advance`: the row's text, its stop strings, its length and context limits, and the
text it may stream. Both decoders share this, so they stop, sample and stream alike.

A row's text is decoded incrementally where the tokenizer allows it (byte-level BPE, as
Granite's, without space clean-up): the text of the tokens up to the last whole character is
kept, and each step decodes only the tokens after it, so a step costs the same at the 1000th
token as at the first. Any other tokenizer decodes the whole answer each step.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from gateway.types import FinishReason, Generation, SamplingParams, TextCallback


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
    settled: int = 0
    """How many of `generated` make up `settled_text`: text ending on a whole character, which
    later tokens no longer change."""
    settled_text: str = ""
    emitted: int = 0
    finish_reason: FinishReason | None = None
    generator: torch.Generator | None = None

    def result(self) -> Generation:
        return Generation(
            text=self.text,
            finish_reason=self.finish_reason or "length",
            prompt_tokens=len(self.prompt_ids),
            completion_tokens=len(self.generated),
        )

    def was_cancelled(self) -> bool:
        return self.cancelled is not None and self.cancelled()


class RowStepper:
    """Token choice and stop conditions, for the rows of one engine."""

    def __init__(
        self,
        tokenizer: object,
        *,
        eos_id: int,
        max_context: int,
        incremental: bool | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.eos_id = eos_id
        self.max_context = max_context
        self.incremental = decodes_by_pieces(tokenizer) if incremental is None else incremental

    @staticmethod
    def seed(rows: Sequence[DecodeRow], device: torch.device) -> None:
        """A random generator for each sampled row (seeded by its `seed` when it has one)."""
        for row in rows:
            if row.sampling.greedy:
                continue
            row.generator = torch.Generator(device=device)
            seed = row.sampling.seed
            row.generator.manual_seed(seed if seed is not None else random.getrandbits(63))

    def pick_all(self, logits: torch.Tensor, rows: Sequence[DecodeRow]) -> list[int]:
        """One token per row from `logits` (rows, vocabulary): the greedy rows by arg-max, the
        sampled rows by their temperature and top-p, each from its own generator; all of them in
        a few batched operations and one device-to-host copy (two with a top-p row), not one
        per sampled row."""
        chosen = logits.argmax(dim=-1)
        sampled = [i for i, row in enumerate(rows) if not row.sampling.greedy]
        if sampled:
            table = _on_device(
                [[i, rows[i].sampling.temperature, rows[i].sampling.top_p] for i in sampled],
                logits.device,
            )
            where = table[:, 0].long()
            picks = _sample(
                [rows[i] for i in sampled], logits.index_select(0, where), table[:, 1], table[:, 2]
            )
            chosen = chosen.index_copy(0, where, picks)
        tokens: list[int] = chosen.tolist()
        return tokens

    def advance(self, row: DecodeRow, token: int) -> None:
        """Record one token: update the text, apply stop conditions, stream what is final."""
        if token == self.eos_id:
            row.finish_reason = "stop"
            emit(row, final=True)
            return
        row.generated.append(token)
        changed = self._decode(row)
        # One wholly before `changed` was there last step: it would have stopped the row.
        found = [row.text.find(stop, max(0, changed - len(stop) + 1)) for stop in row.sampling.stop]
        ends = [at for at in found if at >= 0]
        if ends:  # the earliest, whichever stop string it is
            row.text = row.text[: min(ends)]
            row.finish_reason = "stop"
        if row.finish_reason is None and len(row.generated) >= row.sampling.max_tokens:
            row.finish_reason = "length"
        if row.finish_reason is None and self.context_full(row):
            row.finish_reason = "length"
        emit(row, final=row.finish_reason is not None)

    def _decode(self, row: DecodeRow) -> int:
        """`row.text` with its newest token; returns where the text may differ from before."""
        decode = self.tokenizer.decode  # type: ignore[attr-defined]
        if not self.incremental:
            row.text = decode(row.generated, skip_special_tokens=True)
            return 0
        changed = len(row.settled_text)
        fresh = decode(row.generated[row.settled :], skip_special_tokens=True)
        row.text = row.settled_text + fresh
        if not fresh.endswith("\ufffd"):  # whole characters: the bytes after start anew
            row.settled, row.settled_text = len(row.generated), row.text
        return changed

    def context_full(self, row: DecodeRow) -> bool:
        return len(row.prompt_ids) + len(row.generated) >= self.max_context

    def step(self, rows: Sequence[DecodeRow], logits: torch.Tensor) -> list[int]:
        """Advance every row by its token; returns the indices of the rows still decoding.

        A cancelled row stops without a result; a finished one gets its `on_done`.
        """
        tokens = self.pick_all(logits, rows)
        keep: list[int] = []
        for i, row in enumerate(rows):
            if row.was_cancelled():
                continue
            self.advance(row, tokens[i])
            if row.finish_reason is not None:
                if row.on_done is not None:
                    row.on_done(row.result())
                continue
            keep.append(i)
        return keep


NUCLEUS_CANDIDATES = 1024
"""Top-p looks for its nucleus among this many most likely tokens first (a partial sort); only
a row whose nucleus is wider sorts the whole vocabulary."""


def _on_device(values: list[list[float]], device: torch.device) -> torch.Tensor:
    """A small table of per-row numbers on `device`, copied without waiting for the device (from
    pinned memory: a copy from ordinary memory waits for all the work queued before it)."""
    table = torch.tensor(values, dtype=torch.float32)
    if device.type != "cuda":
        return table
    return table.pin_memory().to(device, non_blocking=True)


def _sample(
    rows: Sequence[DecodeRow], logits: torch.Tensor, temperature: torch.Tensor, top_p: torch.Tensor
) -> torch.Tensor:
    """One token per row of `logits` (rows, vocabulary), drawn from its softmax at the row's
    `temperature`, within its `top_p` nucleus, by inverse transform: one uniform number per row,
    from the row's own generator, located in the row's cumulative distribution."""
    device = logits.device
    probs = torch.softmax(logits.float() / temperature[:, None], dim=-1)
    if any(r.sampling.top_p < 1.0 for r in rows):
        probs = _nucleus(probs, top_p)
    uniform = torch.cat([torch.rand(1, device=device, generator=r.generator) for r in rows])
    # In float64: summed in float32 over 100,000 tokens, the draws stray from the softmax by a
    # total variation of ~5e-4 (on the rarest tokens).
    cumulative = torch.cumsum(probs, dim=-1, dtype=torch.float64)
    # The first token whose cumulative probability passes the draw: a token of probability 0
    # never does (its cumulative equals the one before it).
    target = (uniform.double() * cumulative[:, -1]).unsqueeze(-1)
    picks = torch.searchsorted(cumulative, target, right=True).squeeze(-1)
    return picks.clamp_(max=probs.shape[-1] - 1)


def _nucleus(probs: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """`probs` with the tokens outside each row's top-p nucleus set to 0: a token stays while
    the tokens more likely than it sum to at most `top_p` (a row with `top_p` 1 keeps all)."""
    k = min(NUCLEUS_CANDIDATES, probs.shape[-1])
    top, order = torch.topk(probs, k, dim=-1)  # sorted, most likely first
    wider = (top.sum(dim=-1) <= top_p) & (top_p < 1.0)
    if k < probs.shape[-1] and bool(wider.any()):
        top, order = torch.sort(probs, dim=-1, descending=True)  # a nucleus wider than k
    outside = torch.cumsum(top, dim=-1) - top > top_p[:, None]
    outside &= (top_p < 1.0)[:, None]
    kept = torch.zeros_like(probs).scatter(1, order, top.masked_fill(outside, 0.0))
    # The tokens beyond the candidates: outside every nucleus that fits among them.
    return torch.where((top_p < 1.0)[:, None], kept, probs)


def emit(row: DecodeRow, *, final: bool) -> None:
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


def decodes_by_pieces(tokenizer: object) -> bool:
    """Whether the text of tokens A + B is always that of A followed by that of B, when A's ends
    with a whole character: true of a byte-level BPE decoder (it joins the tokens' bytes and
    reads them as UTF-8), unless the tokenizer cleans up spaces ("a ." -> "a."), which a probe
    shows (transformers 5 leaves them for BPE tokenizers even when asked to clean up)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if type(getattr(backend, "decoder", None)).__name__ != "ByteLevel":
        return False
    probe = "a . b , c ? d ! e 's"
    ids = tokenizer(probe, add_special_tokens=False)["input_ids"]  # type: ignore[operator]
    return bool(tokenizer.decode(ids, skip_special_tokens=True) == probe)  # type: ignore[attr-defined]


PAD_SLACK = 1.25
"""A prefill group's padded tokens may exceed its real tokens by at most this factor."""


def length_groups(lengths: Sequence[int], slack: float = PAD_SLACK) -> list[list[int]]:
    """Indices grouped for padded passes: by length, a new group when padding would exceed
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
