#!/usr/bin/env python
"""Benchmark: the local engine on a GPU, CUDA graphs on and off, in one table (issue 12).

Builds, once, the model of `bench/scoring.py` with `--layers` layers (40: Granite 4.0 Micro's
real size, random weights, saved in bf16) and, for each decoder (the static KV cache with CUDA
graphs, and the eager transformers + PEFT forward), loads it with `LocalEngine.load` and measures:

* one decoding step at 1, 16 and 32 rows (the same prompt in every row, the faster of two runs);
* one one-pass certainty score of a ~320-token prompt (median of `--runs`);
* requests/s and generated tokens/s of closed-loop clients (1, 16, 32) behind the
  `EngineWorker`, each request a `--max-tokens`-token greedy answer and its score;

and once: the seed's quick start of a score (transformers `generate`, the adapter on, 15 new
tokens), and peak device memory (`torch.cuda.max_memory_allocated`; on a CPU, peak RSS and
proportional set size) of one engine against the seed's two copies of the base, each in a
process of its own.

Run on the GPU machine: `bench/gpu.sh` (this script with 40 layers, bf16, cuda). Its CPU half
runs here in a minute: `python bench/gpu.py --device cpu --layers 1 --max-tokens 8 --quick`.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from scoring import HEADS, HIDDEN, KV_HEADS, VOCAB, build_model_folder, certainty_prompt, cpu_name
from throughput import QUESTIONS, decode_steps, measure

RESULT_TAG = "GPU-BENCH "
DECODERS = ("graphs", "eager")


def load(model_dir: Path, args: argparse.Namespace, decoder: str) -> Any:
    from gateway.engine.local import LocalEngine, ModelSource

    source = ModelSource(base=str(model_dir / "base"), adapter=str(model_dir / "adapter"))
    return LocalEngine.load(
        source,
        device=args.device,
        dtype=args.dtype,
        decoder="static" if decoder == "graphs" else "eager",
        max_batch_size=max(args.clients),
        static_context=args.max_context,
    )


def sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(run: Any, runs: int) -> float:
    run()  # warm-up
    times = []
    for _ in range(runs):
        sync()
        started = time.perf_counter()
        run()
        sync()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def child_decoder(model_dir: Path, args: argparse.Namespace, decoder: str) -> dict[str, Any]:
    """Step, score and throughput figures of one decoder."""
    started = time.perf_counter()
    engine = load(model_dir, args, decoder)
    load_s = time.perf_counter() - started
    graphs = bool(getattr(engine.decoder, "use_graphs", False))
    steps = decode_steps(engine, list(args.clients))
    prompt = certainty_prompt(engine, args.prompt_tokens)
    score_s = timed(lambda: engine.score_logits([prompt]), args.runs)
    throughput = {}
    for clients in args.clients:
        total = max(clients * args.per_client, args.min_requests)
        result = measure(engine, "batched", clients, total, args)
        throughput[clients] = {
            "rps": result.requests_per_s,
            "tps": result.tokens_per_s,
            "p50": statistics.median(result.latencies),
        }
    import torch

    return {
        **parity(engine, args.prompt_tokens),
        "device": torch.cuda.get_device_name() if engine.device.type == "cuda" else "cpu",
        "decoder": type(engine.decoder).__name__,
        "graphs": graphs,
        "load_s": load_s,
        "step_s": {rows: step for rows, (_prefill, step) in steps.items()},
        "score_s": score_s,
        "prompt_tokens": len(prompt),
        "throughput": throughput,
        "replayed": getattr(engine.decoder, "steps_replayed", 0),
        "eager_steps": getattr(engine.decoder, "steps_eager", 0),
    }


def parity(engine: Any, prompt_tokens: int) -> dict[str, Any]:
    """What the report compares between the two decoders: the greedy tokens of four mixed
    rows (adapter off and on), and the digit distributions of two certainty prompts."""
    from gateway.engine.local import DecodeRow
    from gateway.types import SamplingParams

    rows = [
        DecodeRow(
            engine.render([{"role": "user", "content": QUESTIONS[i]}]),
            SamplingParams(max_tokens=16, temperature=0.0),
            adapter=i % 2 == 1,
        )
        for i in range(4)
    ]
    engine.decode(rows)
    prompts = [certainty_prompt(engine, tokens) for tokens in (32, prompt_tokens)]
    return {
        "parity_tokens": [row.generated for row in rows],
        "parity_dist": engine.digit_distributions(prompts),
    }


def child_seed_generate(model_dir: Path, args: argparse.Namespace) -> dict[str, Any]:
    """The seed's score: `generate` on the adapted model, 15 new tokens, greedy."""
    import torch
    from peft import PeftModel
    from scoring import ANSWER_SENTENCES, QUESTION
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from gateway.certainty import certainty_messages
    from gateway.engine.loading import resolve_device, resolve_dtype

    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    base = AutoModelForCausalLM.from_pretrained(str(model_dir / "base"), dtype=dtype).to(device)
    model = PeftModel.from_pretrained(base, str(model_dir / "adapter")).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir / "base"))
    user = [{"role": "user", "content": QUESTION}]
    answer: list[str] = []
    ids: list[int] = []
    while len(ids) < args.prompt_tokens:
        answer.append(ANSWER_SENTENCES[len(answer) % len(ANSWER_SENTENCES)])
        text = tokenizer.apply_chat_template(
            certainty_messages(user, " ".join(answer)), add_generation_prompt=True, tokenize=False
        )
        ids = tokenizer.encode(text, add_special_tokens=False)
    prompt = torch.tensor([ids], device=device)

    def run() -> None:
        with torch.inference_mode():
            model.generate(prompt, max_new_tokens=15, min_new_tokens=15, do_sample=False)

    return {"generate15_s": timed(run, max(1, args.runs // 2))}


def child_memory(model_dir: Path, args: argparse.Namespace, kind: str) -> dict[str, Any]:
    """Peak memory of one engine, or of the seed's quick start (the base loaded twice)."""
    import torch
    from scoring import child_engine, child_seed

    if args.device == "cpu" or not torch.cuda.is_available():
        (child_engine if kind == "engine" else child_seed)(model_dir, args.dtype, 64)
        return {"peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, **pss()}
    if kind == "engine":
        engine = load(model_dir, args, "graphs")
        question = engine.render([{"role": "user", "content": QUESTIONS[0]}])
        from gateway.engine.local import DecodeRow
        from gateway.types import SamplingParams

        engine.decode([DecodeRow(question, SamplingParams(max_tokens=4), adapter=False)])
        engine.score_logits([certainty_prompt(engine, args.prompt_tokens)])
    else:
        from peft import PeftModel
        from transformers import AutoModelForCausalLM

        dtype = getattr(torch, args.dtype) if args.dtype != "auto" else torch.bfloat16
        base = AutoModelForCausalLM.from_pretrained(str(model_dir / "base"), dtype=dtype)
        second = AutoModelForCausalLM.from_pretrained(str(model_dir / "base"), dtype=dtype)
        scorer = PeftModel.from_pretrained(second.to("cuda"), str(model_dir / "adapter"))
        base.to("cuda")
        with torch.inference_mode():
            ids = torch.tensor([[1, 2, 3, 4]], device="cuda")
            base(input_ids=ids, use_cache=False, logits_to_keep=1)
            scorer(input_ids=ids, use_cache=False, logits_to_keep=1)
    torch.cuda.synchronize()
    return {"peak_mib": torch.cuda.max_memory_allocated() / 2**20}


def pss() -> dict[str, float]:
    """Proportional set size (MiB): shared file pages counted once across processes."""
    try:
        for line in Path("/proc/self/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return {"pss_mib": int(line.split()[1]) / 1024}
    except OSError:
        pass
    return {}


def spawn(kind: str, model_dir: Path, argv: list[str]) -> dict[str, Any]:
    command = [sys.executable, str(Path(__file__).resolve()), *argv, "--child", kind]
    command += ["--model-dir", str(model_dir)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    for line in done.stdout.splitlines():
        if line.startswith(RESULT_TAG):
            result: dict[str, Any] = json.loads(line[len(RESULT_TAG) :])
            return result
    sys.stderr.write(done.stdout[-4000:] + done.stderr[-4000:])
    return {"failed": f"exit {done.returncode}"}


def report(args: argparse.Namespace, results: dict[str, dict[str, Any]]) -> list[str]:
    def cell(value: Any, scale: float = 1.0, digits: int = 1) -> str:
        return "-" if value is None else f"{value * scale:.{digits}f}"

    graphs, eager = results.get("graphs", {}), results.get("eager", {})
    lines = [
        "local engine on a GPU: CUDA graphs on and off (bench/gpu.py, issue 12)",
        f"date: {time.strftime('%Y-%m-%d %H:%M')}   device: {graphs.get('device', '?')}   "
        f"host: {cpu_name()}, {os.cpu_count()} CPUs",
        f"model: GraniteMoeHybrid, {args.layers} layers (real: 40), hidden {HIDDEN}, heads "
        f"{HEADS}/{KV_HEADS} kv, vocab {VOCAB}, random weights, dtype {args.dtype}; "
        f"static cache {max(args.clients)} rows x {args.max_context} tokens",
        f"decoders: graphs = {graphs.get('decoder', '?')} (graphs used: "
        f"{graphs.get('graphs', '?')}, {graphs.get('replayed', 0)} steps replayed, "
        f"{graphs.get('eager_steps', 0)} eager), eager = {eager.get('decoder', '?')}",
        "",
        f"{'figure':<52}{'graphs':>10}{'eager':>10}{'eager/graphs':>14}",
    ]

    def row(label: str, a: Any, b: Any, scale: float, digits: int, ratio: bool = True) -> None:
        times = f"{b / a:.1f}x" if ratio and a and b else "-"
        lines.append(
            f"{label:<52}{cell(a, scale, digits):>10}{cell(b, scale, digits):>10}{times:>14}"
        )

    for rows in args.clients:
        row(
            f"decode step, {rows} row(s), ms",
            graphs.get("step_s", {}).get(str(rows)),
            eager.get("step_s", {}).get(str(rows)),
            1000,
            1,
        )
    row(
        f"one-pass score, {graphs.get('prompt_tokens', '?')}-token prompt, ms (median)",
        graphs.get("score_s"),
        eager.get("score_s"),
        1000,
        1,
    )
    for clients in args.clients:
        a = graphs.get("throughput", {}).get(str(clients), {})
        b = eager.get("throughput", {}).get(str(clients), {})
        row(f"{clients} client(s): requests/s", a.get("rps"), b.get("rps"), 1, 2, False)
        row(f"{clients} client(s): generated tokens/s", a.get("tps"), b.get("tps"), 1, 1, False)
        speedup = a.get("tps") / b.get("tps") if a.get("tps") and b.get("tps") else None
        lines.append(f"{'  tokens/s graphs / eager':<52}{cell(speedup, 1, 1):>10}")
    if graphs.get("parity_tokens") and eager.get("parity_tokens"):
        same = [
            a == b for a, b in zip(graphs["parity_tokens"], eager["parity_tokens"], strict=True)
        ]
        worst = max(
            abs(x - y)
            for a, b in zip(graphs["parity_dist"], eager["parity_dist"], strict=True)
            for x, y in zip(a, b, strict=True)
        )
        lines.append(f"{'parity: greedy rows with the same 16 tokens':<52}{sum(same)}/{len(same)}")
        lines.append(
            f"{'parity: largest digit probability difference':<52}{worst:.2e}"
            f"  target <= 1e-3: {'PASS' if worst <= 1e-3 else 'FAIL'}"
        )
    seed = results.get("seed_generate", {}).get("generate15_s")
    lines.append(
        f"{'seed quick start: generate 15 tokens (adapter on), ms':<52}{cell(seed, 1000):>10}"
    )
    memory = results.get("memory", {})
    engine_mib = memory.get("engine", {}).get("peak_mib")
    seed_mib = memory.get("seed", {}).get("peak_mib")
    lines += [
        "",
        "peak memory, MiB (cuda: torch.cuda.max_memory_allocated; cpu: peak RSS, and the PSS "
        "at the end, which counts the checkpoint's shared file pages once)",
        f"  one engine (base + adapter, one copy, static cache): {cell(engine_mib, 1, 0)}"
        f"   pss {cell(memory.get('engine', {}).get('pss_mib'), 1, 0)}",
        f"  seed quick start (the base twice):                   {cell(seed_mib, 1, 0)}"
        f"   pss {cell(memory.get('seed', {}).get('pss_mib'), 1, 0)}",
    ]
    if engine_mib and seed_mib:
        lines.append(f"  ratio engine / seed: {engine_mib / seed_mib:.2f}")
    for name in ("graphs", "eager", "seed_generate"):
        if "failed" in results.get(name, {}):
            lines.append(f"{name}: the child process failed ({results[name]['failed']})")
    return lines


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layers", type=int, default=40, help="decoder layers (real model: 40)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--dtype", default="bfloat16", choices=["auto", "float32", "bfloat16"])
    parser.add_argument("--max-tokens", type=int, default=64, help="new tokens per answer")
    parser.add_argument("--max-context", type=int, default=1024, help="static cache tokens/row")
    parser.add_argument(
        "--clients", type=lambda t: [int(c) for c in t.split(",")], default=[1, 16, 32]
    )
    parser.add_argument("--per-client", type=int, default=2, help="requests per client")
    parser.add_argument("--min-requests", type=int, default=4)
    parser.add_argument("--runs", type=int, default=10, help="timed runs of a score")
    parser.add_argument("--prompt-tokens", type=int, default=320)
    parser.add_argument("--batch-wait-ms", type=float, default=2.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model-dir", default=None, help="reuse (or create) the model here")
    parser.add_argument("--quick", action="store_true", help="skip the memory children")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.max_batch_size = max(args.clients)  # what `throughput.measure` batches to
    return args


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.child:
        model_dir = Path(args.model_dir)
        if args.child == "build":
            build_model_folder(model_dir, layers=args.layers, seed=args.seed)
            result: dict[str, Any] = {}
        elif args.child in DECODERS:
            result = child_decoder(model_dir, args, args.child)
        elif args.child == "seed_generate":
            result = child_seed_generate(model_dir, args)
        else:
            result = child_memory(model_dir, args, args.child.removeprefix("memory_"))
        print(RESULT_TAG + json.dumps(result), flush=True)
        return 0
    temporary = args.model_dir is None
    model_dir = Path(args.model_dir or tempfile.mkdtemp(prefix="bench-gpu-"))
    forwarded = [a for a in argv if a not in ("--quick",)]
    if "--model-dir" in forwarded:
        at = forwarded.index("--model-dir")
        del forwarded[at : at + 2]
    results: dict[str, Any] = {}
    try:
        # Everything that imports torch runs in a child: on Linux a child's peak RSS starts
        # at its parent's.
        if not (model_dir / "adapter" / "adapter_config.json").exists():
            print(f"building the model ({args.layers} layers) in {model_dir} ...", flush=True)
            spawn("build", model_dir, forwarded)
        for name in (*DECODERS, "seed_generate"):
            print(f"{name} ...", flush=True)
            results[name] = spawn(name, model_dir, forwarded)
        if not args.quick:
            results["memory"] = {}
            for kind in ("engine", "seed"):
                print(f"memory: {kind} ...", flush=True)
                results["memory"][kind] = spawn(f"memory_{kind}", model_dir, forwarded)
    finally:
        if temporary:
            shutil.rmtree(model_dir, ignore_errors=True)
    print()
    print("\n".join(report(args, json.loads(json.dumps(results)))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
