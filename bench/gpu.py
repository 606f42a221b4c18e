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
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

from scoring import HEADS, HIDDEN, KV_HEADS, VOCAB, build_model_folder, certainty_prompt, cpu_name
from throughput import QUESTIONS, decode_steps, measure

RESULT_TAG = "GPU-BENCH "
DECODERS = ("graphs", "eager")
CHILDREN = {"graphs": 0.4, "eager": 0.6, "seed_generate": 0.4, "memory_engine": 0.5}
"""Each child's share of the time left when it starts (`--budget-s`); the last one gets the rest."""
MIN_CHILD_S = 20.0


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
    """Parity, step, score and throughput figures of one decoder. A part that fails is named
    in `errors` and the next one runs; the result so far is printed after each part, so a
    child stopped by the time budget still reports what it measured."""
    import torch

    started = time.perf_counter()
    try:
        engine = load(model_dir, args, decoder)
    except Exception as exc:
        traceback.print_exc()
        return {"errors": {"load": error_line(exc)}}
    static = engine.decoder
    result: dict[str, Any] = {
        "load_s": time.perf_counter() - started,
        "device": torch.cuda.get_device_name() if engine.device.type == "cuda" else "cpu",
        "decoder": type(static).__name__,
        "graphs": bool(getattr(static, "use_graphs", False)),
        "graphs_captured": len(getattr(static, "graphs", {})),
        "shapes": len(getattr(static, "batch_buckets", ()))
        * len(getattr(static, "context_buckets", ())),
        "capture_error": getattr(static, "capture_error", None),
    }
    emit(result)

    def steps() -> dict[str, Any]:
        timings = decode_steps(engine, list(args.clients))
        return {"step_s": {rows: step for rows, (_prefill, step) in timings.items()}}

    def score() -> dict[str, Any]:
        prompt = certainty_prompt(engine, args.prompt_tokens)
        score_s = timed(lambda: engine.score_logits([prompt]), args.runs)
        return {"score_s": score_s, "prompt_tokens": len(prompt)}

    def throughput(clients: int) -> dict[str, Any]:
        total = max(clients * args.per_client, args.min_requests)
        run = measure(engine, "batched", clients, total, args)
        figures = {
            "rps": run.requests_per_s,
            "tps": run.tokens_per_s,
            "p50": statistics.median(run.latencies),
        }
        return {"throughput": {**result.get("throughput", {}), clients: figures}}

    parts = [("parity", lambda: parity(engine, args.prompt_tokens)), ("steps", steps)]
    parts += [("score", score)]
    parts += [(f"throughput {c}", lambda c=c: throughput(c)) for c in args.clients]
    for name, part in parts:
        try:
            result.update(part())
        except Exception as exc:  # the next part still runs; the report names this one
            traceback.print_exc()
            result.setdefault("errors", {})[name] = error_line(exc)
        result["replayed"] = getattr(static, "steps_replayed", 0)
        result["eager_steps"] = getattr(static, "steps_eager", 0)
        result["graphs_left"] = len(getattr(static, "graphs", {}))
        emit(result)
    return result


def emit(result: dict[str, Any]) -> None:
    print(RESULT_TAG + json.dumps(result), flush=True)


def error_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0][:160] if lines else ''}"


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


def spawn(kind: str, model_dir: Path, argv: list[str], timeout: float | None) -> dict[str, Any]:
    """The last result a child printed; `incomplete` when it then failed, ran out of its time
    or was stopped (its output goes to files, so what it printed survives either)."""
    command = [sys.executable, str(Path(__file__).resolve()), *argv, "--child", kind]
    command += ["--model-dir", str(model_dir)]
    with tempfile.TemporaryFile("w+") as out_file, tempfile.TemporaryFile("w+") as err_file:
        try:
            done = subprocess.run(command, stdout=out_file, stderr=err_file, timeout=timeout)
            ended, ok = f"exit {done.returncode}", done.returncode == 0
        except subprocess.TimeoutExpired:
            ended, ok = f"stopped after {timeout:.0f} s, its share of --budget-s", False
        except Stopped as exc:  # the child was killed; keep what it printed
            ended, ok = str(exc), False
        out_file.seek(0)
        err_file.seek(0)
        out, err = out_file.read(), err_file.read()
    if not ok:
        sys.stderr.write(f"--- {kind}: {ended}\n{out[-1500:]}{err[-2500:]}\n")
    lines = [line for line in out.splitlines() if line.startswith(RESULT_TAG)]
    result: dict[str, Any] = json.loads(lines[-1][len(RESULT_TAG) :]) if lines else {}
    if not ok:
        result["incomplete" if lines else "failed"] = ended
    return result


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
        f"decoders: graphs = {graphs.get('decoder', '?')} (CUDA graphs: "
        f"{graphs.get('graphs_captured', '?')} of {graphs.get('shapes', '?')} shapes captured, "
        f"{graphs.get('graphs_left', '?')} left at the end; {graphs.get('replayed', 0)} steps "
        f"replayed, {graphs.get('eager_steps', 0)} eager), eager = {eager.get('decoder', '?')}",
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
    if graphs.get("capture_error"):
        lines.append(f"graphs: capture failed, later shapes eager: {graphs['capture_error']}")
    named = {**results, **{f"memory {k}": v for k, v in memory.items()}}
    for name, result in named.items():
        if not isinstance(result, dict):
            continue
        for key in ("failed", "incomplete"):
            if key in result:
                lines.append(f"{name}: the child process {key}: {result[key]}")
        for part, error in result.get("errors", {}).items():
            lines.append(f"{name}: {part} failed: {error}")
    if STOPPED:
        lines.append(f"the run was {STOPPED[0]}; the figures above are what had finished")
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
    parser.add_argument(
        "--budget-s", type=float, default=0.0, help="stop children past this many seconds (0: none)"
    )
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.max_batch_size = max(args.clients)  # what `throughput.measure` batches to
    return args


class Stopped(Exception):
    """The run was told to stop (SIGTERM, e.g. from `timeout`): report what is done."""


STOPPED: list[str] = []


def stop(signum: int, _frame: Any) -> None:
    signal.signal(signum, signal.SIG_IGN)  # once: the report is printed next
    STOPPED.append(f"stopped by signal {signum}")
    raise Stopped(STOPPED[-1])


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
        emit(result)
        return 0
    signal.signal(signal.SIGTERM, stop)
    deadline = time.monotonic() + args.budget_s if args.budget_s else None
    temporary = args.model_dir is None
    model_dir = Path(args.model_dir or tempfile.mkdtemp(prefix="bench-gpu-"))
    forwarded = [a for a in argv if a not in ("--quick",)]
    if "--model-dir" in forwarded:
        at = forwarded.index("--model-dir")
        del forwarded[at : at + 2]
    children = [*DECODERS, "seed_generate"]
    if not args.quick:
        children += ["memory_engine", "memory_seed"]
    results: dict[str, Any] = {}
    try:
        # Everything that imports torch runs in a child: on Linux a child's peak RSS starts
        # at its parent's.
        if not (model_dir / "adapter" / "adapter_config.json").exists():
            print(f"building the model ({args.layers} layers) in {model_dir} ...", flush=True)
            started = time.monotonic()
            built = spawn("build", model_dir, forwarded, left(deadline))
            print(f"  built in {time.monotonic() - started:.0f} s {built or ''}", flush=True)
        for name in children:
            remaining = left(deadline)
            if STOPPED:
                break
            if remaining is not None and remaining < MIN_CHILD_S:
                results[name] = {"failed": "skipped: no time left in --budget-s"}
                continue
            timeout = None if remaining is None else remaining * CHILDREN.get(name, 1.0)
            print(f"{name} ...", flush=True)
            started = time.monotonic()
            results[name] = spawn(name, model_dir, forwarded, timeout)
            print(f"  {time.monotonic() - started:.0f} s: {json.dumps(results[name])}", flush=True)
    except Stopped:
        pass
    finally:
        if temporary:
            shutil.rmtree(model_dir, ignore_errors=True)
    results["memory"] = {
        kind: results.pop(f"memory_{kind}")
        for kind in ("engine", "seed")
        if f"memory_{kind}" in results
    }
    print()
    print("\n".join(report(args, json.loads(json.dumps(results)))))
    return 0


def left(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - time.monotonic())


if __name__ == "__main__":
    sys.exit(main())
