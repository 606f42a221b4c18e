#!/usr/bin/env python
"""Benchmark: what a decoding row's text costs per step, decoded whole each step or by pieces.

Every decoding step turns each row's tokens into its text (for stop strings and streaming), on
the thread that runs the model. Decoded whole, that costs more with every token of the answer;
decoded by pieces (`gateway.engine.rows`, for byte-level BPE tokenizers such as Granite's), the
same at every step. This feeds answers of several lengths through `RowStepper.advance`, token by
token, both ways, and prints microseconds per row per step (the mean over the answer) and the
ratio. The tokenizer is the miniature model's (built once under `--work`) unless `--tokenizer`
names another folder or hub id (Granite's, where the hub is reachable).

    python bench/detok.py [--lengths 64,256,1024] [--tokenizer PATH] [--work DIR]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from soak import miniature_config

from gateway.engine.rows import DecodeRow, RowStepper, decodes_by_pieces
from gateway.types import SamplingParams

TEXT = (
    "Paris is the capital of France and its largest city, with about 2.1 million people; "
    "the wider region holds some 12 million. Known for the Louvre, the Eiffel Tower (1889) and "
    "cafés on every corner, it is also a centre of finance, fashion and science. "
)


def per_step_us(tokenizer: Any, ids: list[int], incremental: bool, runs: int) -> float:
    """Mean microseconds of one `advance` over an answer of `ids` (best of `runs`)."""
    stepper = RowStepper(tokenizer, eos_id=-1, max_context=10**9, incremental=incremental)
    best = float("inf")
    for _ in range(runs):
        row = DecodeRow(
            prompt_ids=[0], sampling=SamplingParams(max_tokens=10**9, stop=("\n\n",)), adapter=False
        )
        row.on_text = lambda _text: None  # streamed, as a client's would be
        begun = time.perf_counter()
        for token in ids:
            stepper.advance(row, token)
        best = min(best, (time.perf_counter() - begun) / len(ids))
    return best * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lengths", default="64,256,1024")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--tokenizer", default=None, help="a tokenizer folder or hub id")
    parser.add_argument("--work", default=None, help="where the miniature model is (built once)")
    args = parser.parse_args()
    from transformers import AutoTokenizer

    source = args.tokenizer
    if source is None:
        work = Path(args.work or tempfile.mkdtemp(prefix="bench-detok-"))
        work.mkdir(parents=True, exist_ok=True)
        miniature_config(work)
        source = str(work / "tiny" / "base")
    tokenizer = AutoTokenizer.from_pretrained(source)
    stream: list[int] = tokenizer(TEXT * 200, add_special_tokens=False, verbose=False)["input_ids"]
    lengths = [int(n) for n in args.lengths.split(",")]
    print(f"tokenizer: {source} (decodes by pieces: {decodes_by_pieces(tokenizer)})")
    print("us per row per step, the mean over the answer (best of runs)")
    print(f"{'answer tokens':>13} {'whole':>9} {'by pieces':>10} {'ratio':>7}")
    ratios = []
    for length in lengths:
        ids = stream[:length]
        whole = per_step_us(tokenizer, ids, incremental=False, runs=args.runs)
        pieces = per_step_us(tokenizer, ids, incremental=True, runs=args.runs)
        ratios.append(whole / pieces)
        print(f"{length:>13} {whole:>9.1f} {pieces:>10.1f} {whole / pieces:>6.1f}x")
    print(f"geometric mean ratio: {statistics.geometric_mean(ratios):.1f}x")


if __name__ == "__main__":
    main()
