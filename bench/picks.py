#!/usr/bin/env python
"""Benchmark: what choosing each row's next token costs per decoding step.

`RowStepper.pick_all` runs on the model's thread after every step: arg-max for greedy rows,
temperature and top-p sampling for the others. This times it over random logits the size of
Granite's vocabulary (100,352) for several row counts and mixes, on `--device` (cpu, or cuda
where there is one: there each device-to-host copy waits for the device), and prints
microseconds per step. The logits are peaked as a language model's are (normal, standard
deviation 4: the most likely token ~0.2, a 0.9 nucleus of ~50 tokens), and in the last column
flat (deviation 1: a 0.9 nucleus of half the vocabulary, the worst case for top-p). Run it on two
checkouts in turn to compare two ways of choosing.

    python bench/picks.py [--rows 1,16,32] [--device cpu] [--steps 50]
"""

from __future__ import annotations

import argparse
import time

import torch

from gateway.engine.rows import DecodeRow, RowStepper
from gateway.types import SamplingParams

VOCABULARY = 100_352
MIXES = {  # (sampling, the logits' standard deviation)
    "greedy": (SamplingParams(temperature=0.0), 4.0),
    "sampled (t=1)": (SamplingParams(temperature=1.0), 4.0),
    "top-p 0.9": (SamplingParams(temperature=0.8, top_p=0.9), 4.0),
    "top-p 0.9, flat": (SamplingParams(temperature=0.8, top_p=0.9), 1.0),
}


def per_step_us(
    rows: int, sampling: SamplingParams, spread: float, device: torch.device, steps: int
) -> float:
    decoding = [DecodeRow(prompt_ids=[0], sampling=sampling, adapter=False) for _ in range(rows)]
    stepper = RowStepper(None, eos_id=-1, max_context=10**9)
    stepper.seed(decoding, device)
    logits = torch.randn(rows, VOCABULARY, device=device) * spread
    stepper.pick_all(logits, decoding)  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    begun = time.perf_counter()
    for _ in range(steps):
        stepper.pick_all(logits, decoding)
    return (time.perf_counter() - begun) / steps * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", default="1,16,32")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=50)
    args = parser.parse_args()
    device = torch.device(args.device)
    counts = [int(n) for n in args.rows.split(",")]
    print(f"token choice per decoding step, vocabulary {VOCABULARY}, {device}, us per step")
    print(f"{'rows':>5} " + " ".join(f"{name:>20}" for name in MIXES))
    for count in counts:
        cells = [per_step_us(count, *mix, device, args.steps) for mix in MIXES.values()]
        print(f"{count:>5} " + " ".join(f"{cell:>20.0f}" for cell in cells))


if __name__ == "__main__":
    main()
