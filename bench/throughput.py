#!/usr/bin/env python
"""Benchmark: throughput of the local engine, batched vs unbatched (issue 7, item 2).

Builds, once, the model of `bench/scoring.py`: a `GraniteMoeHybridForCausalLM` at Granite 4.0
Micro's real width (hidden 2560, 40/8 heads, vocabulary 100352, MLP 8192) with a few layers and
random weights, plus an r=32 LoRA of the real adapter's shape. It loads it with
`LocalEngine.load` and puts it behind an `EngineWorker`, then runs closed-loop clients: each
client sends a request, waits for it, and sends the next. A request is what the gateway's
pipeline asks of the engine: the answer (`generate`, greedy, adapter off, `--max-tokens` new
tokens) and then its certainty (`score`, logits mode, adapter on).

At each concurrency (1, 4 and 16 clients) it runs the same requests twice in this one process,
one after the other: unbatched (`max_batch_size=1`: one request at a time, the seed's behaviour)
and batched (`max_batch_size=--max-batch-size`, `batch_wait_ms=--batch-wait-ms`: answers decode
together, rows join and leave between steps, scores share one forward pass). It reports requests
per second, generated tokens per second, the median request latency, and the batched/unbatched
ratio of requests per second. Target: >= 3x at 16 concurrent requests.

Run: `python bench/throughput.py` (about 15 minutes on a 2-core CPU); `--help` for the options.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scoring import HEADS, HIDDEN, INTERMEDIATE, KV_HEADS, RANK, VOCAB, build_model_folder, cpu_name

TARGET = 3.0  # batched / unbatched requests per second at 16 concurrent requests
JUDGED_CONCURRENCY = 16

# Questions of different lengths: rows in a batch are left padded, as in real traffic.
QUESTIONS = [
    "What is the capital of France?",
    "Which river flows through Paris?",
    "Who built the first bridge over the river in the old city, and when?",
    "Why is the sky blue during the day but red at sunset?",
    "How many people live in London?",
    "What is the tallest mountain in the country, and how high is it above the sea?",
    "When did the first people arrive on the island in the middle of the river?",
    "Where does the sun rise?",
]


@dataclass
class Result:
    concurrency: int
    mode: str
    requests: int
    wall_s: float
    cpu_s: float
    generated_tokens: int
    latencies: list[float]
    batches: int
    rows_joined: int

    @property
    def requests_per_s(self) -> float:
        return self.requests / self.wall_s

    @property
    def tokens_per_s(self) -> float:
        return self.generated_tokens / self.wall_s


def requests_at(concurrency: int, per_client: int, minimum: int) -> int:
    return max(minimum, concurrency * per_client)


async def closed_loop(
    worker: Any, concurrency: int, total: int, max_tokens: int
) -> tuple[int, list[float]]:
    """`concurrency` clients share `total` requests; each waits for its answer and score."""
    from gateway.types import ChatRequest, Message, SamplingParams

    sampling = SamplingParams(max_tokens=max_tokens, temperature=0.0)
    counter = iter(range(total))
    latencies: list[float] = []
    generated = 0

    async def client() -> None:
        nonlocal generated
        for index in counter:
            question = QUESTIONS[index % len(QUESTIONS)]
            messages = (Message(role="user", content=question),)
            started = time.perf_counter()
            answer = await worker.generate(ChatRequest(messages=messages, sampling=sampling))
            await worker.score(messages, answer.text, mode="logits")
            latencies.append(time.perf_counter() - started)
            generated += answer.completion_tokens

    await asyncio.gather(*(client() for _ in range(concurrency)))
    return generated, latencies


def measure(
    engine: Any, mode: str, concurrency: int, total: int, args: argparse.Namespace
) -> Result:
    from gateway.engine.worker import EngineWorker

    batch = 1 if mode == "unbatched" else args.max_batch_size

    async def scenario() -> Result:
        worker = EngineWorker(
            engine,
            max_batch_size=batch,
            batch_wait_ms=args.batch_wait_ms,
            queue_size=max(64, 2 * concurrency),
        )
        worker.start()
        try:
            wall0, cpu0 = time.perf_counter(), time.process_time()
            generated, latencies = await closed_loop(worker, concurrency, total, args.max_tokens)
            wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
        finally:
            await worker.stop()
        return Result(
            concurrency=concurrency,
            mode=mode,
            requests=total,
            wall_s=wall,
            cpu_s=cpu,
            generated_tokens=generated,
            latencies=latencies,
            batches=worker.batches_run,
            rows_joined=worker.rows_joined,
        )

    return asyncio.run(scenario())


def decode_steps(engine: Any, batches: list[int], steps: int = 8) -> dict[int, tuple[float, float]]:
    """Per batch size: (prefill s per row, one decoding step s), straight on the engine."""
    from gateway.engine.local import DecodeRow
    from gateway.types import SamplingParams

    prompt = engine.render([{"role": "user", "content": QUESTIONS[0]}])

    def run(rows: int, tokens: int) -> float:
        batch = [
            DecodeRow(list(prompt), SamplingParams(max_tokens=tokens), adapter=False)
            for _ in range(rows)
        ]
        started = time.perf_counter()
        engine.decode(batch)
        return time.perf_counter() - started

    timings: dict[int, tuple[float, float]] = {}
    run(1, 2)  # warm-up
    for rows in batches:
        first = min(run(rows, 1) for _ in range(2))  # the faster of two: less noise
        more = min(run(rows, 1 + steps) for _ in range(2))
        timings[rows] = (first / rows, (more - first) / steps)
    return timings


def report(args: argparse.Namespace, results: list[Result], facts: dict[str, Any]) -> list[str]:
    lines = [
        "local engine throughput benchmark (bench/throughput.py, issue 7 item 2)",
        f"date: {time.strftime('%Y-%m-%d %H:%M')}   machine: {cpu_name()}, {os.cpu_count()} CPUs, "
        f"torch threads {facts['threads']}, dtype {facts['dtype']}, device {facts['device']}, "
        f"decoder {facts['decoder']}, CUDA graphs {'used' if facts['graphs'] else 'not used'}",
        f"model: GraniteMoeHybrid, {args.layers} layers (real: 40), hidden {HIDDEN}, heads "
        f"{HEADS}/{KV_HEADS} kv, vocab {VOCAB}, MLP {INTERMEDIATE}, random weights; "
        f"LoRA r={RANK} on 6 modules",
        f"request: answer ({args.max_tokens} new tokens, greedy, adapter off) then its score "
        f"(logits mode, adapter on); closed-loop clients",
        f"batched = max_batch_size {args.max_batch_size}, batch_wait_ms "
        f"{args.batch_wait_ms:g}; unbatched = max_batch_size 1",
        f"1-min load average {facts['load_before']:.1f} before, {os.getloadavg()[0]:.1f} after; "
        "modes alternate at each concurrency, in one process",
        "",
        f"{'clients':>7}  {'mode':<10}{'requests':>9}{'wall s':>8}{'req/s':>8}{'gen tok/s':>10}"
        f"{'p50 s':>8}{'CPU s':>8}{'batches':>8}{'joined':>7}{'req/s x':>9}",
    ]
    by_key = {(r.concurrency, r.mode): r for r in results}
    verdict = ""
    for concurrency in args.concurrency:
        base = by_key[(concurrency, "unbatched")]
        for mode in ("unbatched", "batched"):
            r = by_key[(concurrency, mode)]
            ratio = r.requests_per_s / base.requests_per_s
            lines.append(
                f"{concurrency:>7}  {mode:<10}{r.requests:>9}{r.wall_s:>8.1f}"
                f"{r.requests_per_s:>8.3f}{r.tokens_per_s:>10.2f}"
                f"{statistics.median(r.latencies):>8.2f}{r.cpu_s:>8.1f}{r.batches:>8}"
                f"{r.rows_joined:>7}{ratio:>9.2f}"
            )
            if mode == "batched" and concurrency == JUDGED_CONCURRENCY:
                passed = ratio >= TARGET
                verdict = (
                    f"batched / unbatched requests per second at {concurrency} concurrent: "
                    f"{ratio:.2f}  target >= {TARGET:.1f}: {'PASS' if passed else 'FAIL'}"
                )
    if verdict:
        lines += ["", verdict]
    steps: dict[int, tuple[float, float]] = facts["steps"]
    single = steps[min(steps)][1]
    lines += [
        "",
        "where the time goes (engine.decode, the same prompt in every row, the faster of two "
        "runs):",
        f"{'rows':>7}  {'prefill s/row':>14}{'step s':>9}{'step s/row':>12}{'per-token gain':>16}",
    ]
    for rows, (prefill, step) in sorted(steps.items()):
        lines.append(
            f"{rows:>7}  {prefill:>14.3f}{step:>9.3f}{step / rows:>12.4f}"
            f"{single / (step / rows):>16.2f}"
        )
    return lines


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Requests/s and generated tokens/s of the local engine, batched vs "
        "unbatched, at Granite 4.0 Micro's real width with random weights."
    )
    parser.add_argument("--layers", type=int, default=4, help="decoder layers (real model: 40)")
    parser.add_argument("--max-tokens", type=int, default=128, help="new tokens per answer")
    parser.add_argument(
        "--concurrency",
        type=lambda text: [int(c) for c in text.split(",")],
        default=[1, 4, 16],
        help="comma-separated client counts (default 1,4,16)",
    )
    parser.add_argument(
        "--per-client", type=int, default=1, help="requests per client at each concurrency"
    )
    parser.add_argument(
        "--min-requests", type=int, default=4, help="at least this many requests per run"
    )
    parser.add_argument("--max-batch-size", type=int, default=16, help="batched mode's batch")
    parser.add_argument("--batch-wait-ms", type=float, default=5.0, help="batched mode's wait")
    parser.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "float32", "bfloat16"],
        help="weights dtype; auto = bf16 when the CPU has native bf16, else float32",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed of the weights")
    parser.add_argument("--model-dir", default=None, help="reuse (or create) the model folder here")
    parser.add_argument(
        "--device",
        default="cpu",
        choices=["auto", "cpu", "cuda"],
        help="where the engine runs (cuda: static KV cache + CUDA graphs, as `serve` does)",
    )
    parser.add_argument("--no-graphs", action="store_true", help="the eager decoder even on CUDA")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    temporary = args.model_dir is None
    model_dir = Path(args.model_dir or tempfile.mkdtemp(prefix="bench-throughput-"))
    try:
        if not (model_dir / "adapter" / "adapter_config.json").exists():
            print(f"building the model ({args.layers} layers) in {model_dir} ...", flush=True)
            build_model_folder(model_dir, layers=args.layers, seed=args.seed)
        import torch

        from gateway.engine.local import LocalEngine, ModelSource
        from gateway.types import ChatRequest, Message, SamplingParams

        source = ModelSource(base=str(model_dir / "base"), adapter=str(model_dir / "adapter"))
        engine = LocalEngine.load(
            source,
            device=args.device,
            dtype=args.dtype,
            decoder="eager" if args.no_graphs else "auto",
            max_batch_size=args.max_batch_size,
        )
        # Warm-up: one answer and one score, batched and not.
        warm = ChatRequest(
            messages=(Message(role="user", content=QUESTIONS[0]),),
            sampling=SamplingParams(max_tokens=2),
        )
        engine.generate(warm)
        engine.score(warm.messages, "Paris.")
        facts = {
            "device": str(engine.device),
            "decoder": type(engine.decoder).__name__,
            "graphs": bool(getattr(engine.decoder, "use_graphs", False)),
            "threads": torch.get_num_threads(),
            "dtype": str(next(engine.model.parameters()).dtype).removeprefix("torch."),
            "load_before": os.getloadavg()[0],
        }
        facts["steps"] = decode_steps(engine, sorted(set(args.concurrency)))
        results: list[Result] = []
        for index, concurrency in enumerate(args.concurrency):
            total = requests_at(concurrency, args.per_client, args.min_requests)
            # Alternate which mode goes first, so drift on a shared machine hits both alike.
            modes = ["unbatched", "batched"] if index % 2 == 0 else ["batched", "unbatched"]
            for mode in modes:
                print(f"{concurrency} clients, {mode}, {total} requests ...", flush=True)
                results.append(measure(engine, mode, concurrency, total, args))
    finally:
        if temporary:
            shutil.rmtree(model_dir, ignore_errors=True)
    print()
    print("\n".join(report(args, results, facts)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
