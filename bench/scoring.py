#!/usr/bin/env python
"""Benchmark: certainty scoring at Granite 4.0 Micro's real width (issue 2, item 7).

Builds, once, a `GraniteMoeHybridForCausalLM` with the real model's width (hidden 2560, 40 heads,
8 key/value heads, vocabulary 100352, shared MLP 8192) but only a few layers, random weights, and a
LoRA of the real adapter's shape (r=32, alpha 64, the six target modules, non-zero B), saves it to
a temporary folder, and measures, each in its own process:

* time per score: `score_logits` (one forward pass, the reply prefix forced) against
  `score_generate` (the seed's generate-and-parse), through `LocalEngine.load`; the generate row
  capped at 7 new tokens is the realistic one (the real adapter's reply `{"score": "X"}` + eos is
  7 tokens), the 15-token row is what an unparseable reply costs;
* peak memory (`ru_maxrss`): one engine (base + adapter, one weight copy) against the seed's quick
  start (the base loaded twice, one copy wrapped by the adapter), and a process that only imports
  torch + transformers, for reference.

Run: `python bench/scoring.py` (a few minutes on a 2-core CPU; `--skip-time` or `--skip-memory`
for one half); `--help` for the options.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

# Real Granite 4.0 Micro sizes (see /work/shared/granite.md); only the layer count is reduced.
HIDDEN = 2560
HEADS = 40
KV_HEADS = 8
VOCAB = 100352
INTERMEDIATE = 8192
RANK = 32
REALISTIC_REPLY_TOKENS = 7  # `{"`, `score`, `":`, ` "`, digit, `"}`, eos
TIME_TARGET = 0.5  # logits / realistic generate
MEMORY_TARGET = 0.55  # one engine / seed quick start, peak RSS

RESULT_TAG = "BENCH-RESULT "

QUESTION = (
    "Which river flows through the capital city of France, and what is the name of the old "
    "island in the middle of it where the first people of the city lived?"
)
ANSWER_SENTENCES = [
    "The river that flows through Paris is the Seine, which starts in the east of France.",
    "In the middle of the city there is a small island called the Ile de la Cite.",
    "The first people of the city lived on that island more than two thousand years ago.",
    "They were a small tribe who fished in the water and traded with people from the south.",
    "Later the Romans built a town there, and the old name of the town was Lutetia.",
    "Over the years the city grew to both banks of the river and became the capital of France.",
    "Today the island holds the old cathedral, the courts of law and a flower market.",
    "Many bridges connect it to the rest of the city, and the oldest one is called Pont Neuf.",
]


# --------------------------------------------------------------------------- model building


def build_model_folder(out: Path, *, layers: int, seed: int) -> None:
    """Write `out/base/` (model + tokenizer) and `out/adapter/` (r=32 LoRA, non-zero B)."""
    import torch
    from transformers import GraniteMoeHybridForCausalLM

    from gateway.engine.tiny import build_adapter, build_tokenizer, granite_config

    tokenizer = build_tokenizer(seed)
    torch.manual_seed(seed)
    config = granite_config(
        tokenizer,
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        intermediate_size=INTERMEDIATE,
        layers=layers,
        heads=HEADS,
        kv_heads=KV_HEADS,
    )
    model = GraniteMoeHybridForCausalLM(config)
    # Saved in bf16 like the real checkpoint: loading converts it to the run's dtype (float32
    # on a CPU without bf16), exactly what loading the real model on this machine does.
    model.to(torch.bfloat16)
    model.eval()
    model.save_pretrained(out / "base")
    tokenizer.save_pretrained(out / "base")
    peft_model = build_adapter(model, seed, rank=RANK)  # the B matrices are non-zero
    peft_model.save_pretrained(out / "adapter")
    config_file = out / "adapter" / "adapter_config.json"
    adapter_config = json.loads(config_file.read_text())
    adapter_config["base_model_name_or_path"] = str(out / "base")
    config_file.write_text(json.dumps(adapter_config, indent=2, sort_keys=True) + "\n")
    del peft_model, model
    gc.collect()


# --------------------------------------------------------------------------- child processes


def _status() -> dict[str, float]:
    """Memory fields of /proc/self/status in MiB (empty where there is no /proc)."""
    fields: dict[str, float] = {}
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmHWM", "VmRSS", "RssAnon", "RssFile"):
                fields[key] = int(value.split()[0]) / 1024
    except OSError:
        pass
    return fields


class AnonSampler:
    """Samples RssAnon (memory the process owns, not clean file pages) for its peak."""

    def __init__(self, interval_s: float = 0.01) -> None:
        self.interval_s = interval_s
        self.peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _status().get("RssAnon", 0.0))
            self._stop.wait(self.interval_s)

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _status().get("RssAnon", 0.0))
        return self.peak


def memory_now() -> dict[str, float]:
    """Peak RSS of this process so far, and the current resident split (MiB, Linux).

    `ru_maxrss` survives fork and exec on Linux: a child starts at its parent's peak. The parent
    of these children therefore never imports torch (the model is built in a child too), and
    `VmHWM` (the peak of this process's own address space, reset by exec) is kept as a check.
    """
    result = {"peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    result.update(_status())
    return result


def certainty_prompt(engine: Any, target_tokens: int) -> list[int]:
    """A question, an answer long enough for ~`target_tokens`, and the `<certainty>` turn."""
    from gateway.types import Message

    messages = [Message(role="user", content=QUESTION)]
    sentences: list[str] = []
    prompt: list[int] = engine.certainty_prompt(messages, "")
    index = 0
    while len(prompt) < target_tokens:
        sentences.append(ANSWER_SENTENCES[index % len(ANSWER_SENTENCES)])
        index += 1
        prompt = engine.certainty_prompt(messages, " ".join(sentences))
    return prompt


DEVICE = "cpu"
"""`--device`, as the child processes were told it."""


def load_engine(model_dir: Path, dtype_name: str) -> Any:
    """The engine as `serve` builds it on `DEVICE`: on CUDA, static cache and CUDA graphs."""
    from gateway.engine.local import LocalEngine, ModelSource

    source = ModelSource(base=str(model_dir / "base"), adapter=str(model_dir / "adapter"))
    return LocalEngine.load(source, device=DEVICE, dtype=dtype_name, decoder="auto")  # type: ignore[arg-type]


def child_time(model_dir: Path, dtype_name: str, runs: int, prompt_tokens: int) -> dict[str, Any]:
    """Median time per score of each mode, interleaved round by round in this one process."""

    from gateway.certainty import MAX_REPLY_TOKENS, parse_reply
    from gateway.engine.local import DecodeRow
    from gateway.types import SamplingParams

    started = time.perf_counter()
    engine = load_engine(model_dir, dtype_name)
    load_s = time.perf_counter() - started
    prompt = certainty_prompt(engine, prompt_tokens)

    def generate(max_tokens: int) -> Callable[[], int]:
        def run() -> int:
            sampling = SamplingParams(max_tokens=max_tokens, temperature=0.0)
            generation = engine.decode([DecodeRow(list(prompt), sampling, adapter=True)])[0]
            parse_reply(generation.text)
            return int(generation.completion_tokens)

        return run

    def full_generate() -> int:
        engine.score_generate([prompt])  # the real generate-mode path, MAX_REPLY_TOKENS cap
        return -1

    def logits() -> int:
        engine.score_logits([prompt])
        return 0

    cases: dict[str, Callable[[], int]] = {
        "logits": logits,
        "generate_7": generate(REALISTIC_REPLY_TOKENS),
        "generate_15": full_generate,
    }
    tokens = {
        "logits": 0,
        "generate_7": generate(REALISTIC_REPLY_TOKENS)(),  # also the warm-up
        "generate_15": generate(MAX_REPLY_TOKENS)(),
    }
    logits()
    times: dict[str, list[float]] = {name: [] for name in cases}
    cpu_times: dict[str, list[float]] = {name: [] for name in cases}
    load_before = os.getloadavg()[0]
    names = list(cases)
    for round_index in range(runs):
        # Rotate the order every round so drift on a shared machine hits every mode alike.
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            t0, c0 = time.perf_counter(), time.process_time()
            cases[name]()
            times[name].append(time.perf_counter() - t0)
            cpu_times[name].append(time.process_time() - c0)
    return {
        **engine_facts(engine),
        "load_s": load_s,
        "prompt_tokens": len(prompt),
        "times": times,
        "cpu_times": cpu_times,
        "tokens": tokens,
        "loadavg": [load_before, os.getloadavg()[0]],
    }


def engine_facts(engine: Any) -> dict[str, Any]:
    """What the report's header says of the engine: torch threads, dtype, CPU bf16 support."""
    import torch

    from gateway.engine.loading import cpu_supports_bf16

    return {
        "threads": torch.get_num_threads(),
        "dtype": str(next(engine.model.parameters()).dtype).removeprefix("torch."),
        "cpu_bf16": cpu_supports_bf16(),
        "device": str(engine.device),
        "decoder": type(engine.decoder).__name__,
        "graphs": bool(getattr(engine.decoder, "use_graphs", False)),
    }


def child_engine(model_dir: Path, dtype_name: str, prompt_tokens: int) -> dict[str, Any]:
    """One engine: base + adapter on one `PeftModel`; one answer step, then one score."""
    from gateway.engine.local import DecodeRow
    from gateway.types import SamplingParams

    started = time.perf_counter()
    engine = load_engine(model_dir, dtype_name)
    load_s = time.perf_counter() - started
    question = engine.render([{"role": "user", "content": QUESTION}])
    engine.decode([DecodeRow(question, SamplingParams(max_tokens=1), adapter=False)])
    engine.score_logits([certainty_prompt(engine, prompt_tokens)])
    return {**memory_now(), **engine_facts(engine), "load_s": load_s}


def child_seed(model_dir: Path, dtype_name: str, prompt_tokens: int) -> dict[str, Any]:
    """The seed's quick start: the base loaded twice, the second copy wrapped by the adapter.

    The first copy takes one answer step and the adapted copy one score, the same work as
    `child_engine`, so only the number of weight copies differs.
    """
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from gateway.certainty import REPLY_PREFIX, certainty_messages
    from gateway.engine.loading import resolve_dtype

    dtype = resolve_dtype(dtype_name, torch.device("cpu"))  # type: ignore[arg-type]
    base = AutoModelForCausalLM.from_pretrained(str(model_dir / "base"), dtype=dtype)
    second = AutoModelForCausalLM.from_pretrained(str(model_dir / "base"), dtype=dtype)
    scorer = PeftModel.from_pretrained(second, str(model_dir / "adapter"))
    base.eval()
    scorer.eval()
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir / "base"))

    def render(messages: list[dict[str, str]]) -> list[int]:
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        ids: list[int] = tokenizer.encode(text, add_special_tokens=False)
        return ids

    user = [{"role": "user", "content": QUESTION}]
    sentences: list[str] = []
    prompt = render(certainty_messages(user, ""))
    while len(prompt) < prompt_tokens:
        sentences.append(ANSWER_SENTENCES[len(sentences) % len(ANSWER_SENTENCES)])
        prompt = render(certainty_messages(user, " ".join(sentences)))
    prompt += tokenizer.encode(REPLY_PREFIX, add_special_tokens=False)
    with torch.inference_mode():
        base(input_ids=torch.tensor([render(user)]), use_cache=False, logits_to_keep=1)
        scorer(input_ids=torch.tensor([prompt]), use_cache=False, logits_to_keep=1)
    return memory_now()


def child_baseline() -> dict[str, Any]:
    """Only the libraries: what every Python process with torch + transformers starts at."""
    import torch
    import transformers

    del torch, transformers
    return memory_now()


def run_child(args: argparse.Namespace) -> int:
    global DEVICE
    DEVICE = args.device
    model_dir = Path(args.model_dir)
    result: dict[str, Any]
    sampler = AnonSampler() if args.child in ("engine", "seed", "baseline") else None
    if args.child == "build":
        build_model_folder(model_dir, layers=args.layers, seed=args.seed)
        result = {}
    elif args.child == "time":
        result = child_time(model_dir, args.dtype, args.runs, args.prompt_tokens)
    elif args.child == "engine":
        result = child_engine(model_dir, args.dtype, args.prompt_tokens)
    elif args.child == "seed":
        result = child_seed(model_dir, args.dtype, args.prompt_tokens)
    else:
        result = child_baseline()
    if sampler is not None:
        result["peak_anon_mib"] = sampler.stop()
    print(RESULT_TAG + json.dumps(result), flush=True)
    return 0


def spawn(kind: str, args: argparse.Namespace, model_dir: Path) -> dict[str, Any]:
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        kind,
        "--model-dir",
        str(model_dir),
        "--dtype",
        args.dtype,
        "--runs",
        str(args.runs),
        "--prompt-tokens",
        str(args.prompt_tokens),
        "--layers",
        str(args.layers),
        "--seed",
        str(args.seed),
        "--device",
        args.device,
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    for line in done.stdout.splitlines():
        if line.startswith(RESULT_TAG):
            result: dict[str, Any] = json.loads(line[len(RESULT_TAG) :])
            return result
    sys.stderr.write(done.stdout + done.stderr)
    raise SystemExit(f"the {kind!r} child process failed (exit {done.returncode})")


# --------------------------------------------------------------------------- report


def verdict(ratio: float, target: float) -> str:
    return f"target <= {target:.2f}: {'PASS' if ratio <= target else 'FAIL'}"


def report(
    args: argparse.Namespace,
    timing: dict[str, Any],
    memory: dict[str, dict[str, Any]],
) -> list[str]:
    facts = timing or memory["engine"]  # both carry threads, dtype and cpu_bf16
    lines = [
        "certainty scoring benchmark (bench/scoring.py, issue 2 item 7)",
        f"date: {time.strftime('%Y-%m-%d %H:%M')}   machine: {cpu_name()}, "
        f"{os.cpu_count()} CPUs, torch threads {facts['threads']}, "
        f"dtype {facts['dtype']} (CPU bf16: {'yes' if facts['cpu_bf16'] else 'no'}), "
        f"device {facts.get('device', 'cpu')}, decoder {facts.get('decoder', '?')}, "
        f"CUDA graphs {'used' if facts.get('graphs') else 'not used'}",
        f"model: GraniteMoeHybrid, {args.layers} layers (real: 40), hidden {HIDDEN}, "
        f"heads {HEADS}/{KV_HEADS} kv, vocab {VOCAB}, MLP {INTERMEDIATE}, random weights; "
        f"LoRA r={RANK} alpha={2 * RANK} on 6 modules",
    ]
    if timing:
        lines += report_time(args, timing)
    if memory:
        lines += report_memory(memory)
    return lines


def report_time(args: argparse.Namespace, timing: dict[str, Any]) -> list[str]:
    times = {name: statistics.median(values) for name, values in timing["times"].items()}
    fastest = {name: min(values) for name, values in timing["times"].items()}
    cpu = {name: statistics.median(values) for name, values in timing["cpu_times"].items()}
    tokens = timing["tokens"]
    logits_s = times["logits"]
    load_before, load_after = timing["loadavg"]
    lines = [
        f"prompt: {timing['prompt_tokens']} tokens (certainty prompt); {args.runs} runs per mode, "
        f"modes interleaved; load {timing['load_s']:.1f} s; "
        f"1-min load average {load_before:.1f} before, {load_after:.1f} after",
        "",
        "time per score (one process, LocalEngine.load, one weight copy)",
        "  wall-clock median (judged) and minimum; CPU s = median process CPU time, all threads,",
        "  less sensitive to other processes on a shared machine",
        f"{'mode':<44}{'new tokens':>11}{'median s':>10}{'min s':>8}{'CPU s':>8}"
        f"{'logits/this':>13}",
        f"{'logits (one pass, prefix forced)':<44}{0:>11}{logits_s:>10.3f}"
        f"{fastest['logits']:>8.3f}{cpu['logits']:>8.3f}{1.0:>13.2f}",
    ]
    rows = [
        ("generate_7", f"generate, capped at {REALISTIC_REPLY_TOKENS} (real reply length)"),
        ("generate_15", "generate, up to 15 (unparseable reply)"),
    ]
    for key, label in rows:
        ratio = logits_s / times[key]
        lines.append(
            f"{label:<44}{tokens[key]:>11}{times[key]:>10.3f}{fastest[key]:>8.3f}"
            f"{cpu[key]:>8.3f}{ratio:>13.2f}"
        )
    time_ratio = logits_s / times["generate_7"]
    min_ratio = fastest["logits"] / fastest["generate_7"]
    cpu_ratio = cpu["logits"] / cpu["generate_7"]
    lines += [
        f"time ratio logits / generate(7), medians (judged): {time_ratio:.2f}  "
        f"{verdict(time_ratio, TIME_TARGET)}",
        f"  informational: the same ratio of the fastest runs:   {min_ratio:.2f}  "
        f"{verdict(min_ratio, TIME_TARGET)}",
        f"  informational: the same ratio of CPU-time medians:   {cpu_ratio:.2f}  "
        f"{verdict(cpu_ratio, TIME_TARGET)}",
    ]
    extra = tokens["generate_15"] - tokens["generate_7"]
    if extra > 0:
        step = (cpu["generate_15"] - cpu["generate_7"]) / extra
        prefill = cpu["generate_7"] - (tokens["generate_7"] - 1) * step
        lines.append(
            f"  derived from CPU times: one decode step {step:.3f} CPU s, "
            f"prompt prefill {prefill:.3f} CPU s (logits mode ~ one prefill)"
        )
    return lines


def report_memory(memory: dict[str, dict[str, Any]]) -> list[str]:
    base = memory["baseline"]["peak_mib"]
    engine = memory["engine"]["peak_mib"]
    seed = memory["seed"]["peak_mib"]
    cases = [
        ("baseline: python + import torch, transformers", memory["baseline"]),
        ("one engine: base + adapter (one copy)", memory["engine"]),
        ("seed quick start: base twice, one with adapter", memory["seed"]),
    ]
    base_anon = memory["baseline"]["peak_anon_mib"]
    lines = [
        "",
        f"engine load (LocalEngine.load) in the memory run: {memory['engine']['load_s']:.1f} s",
        "peak memory (each case in its own process: load, one answer step, one score; MiB)",
        "  peak RSS = ru_maxrss (VmHWM from /proc agrees); peak anon = sampled RssAnon, memory the",
        "  process owns, without the clean file pages of the checkpoint mapped while loading",
        f"{'case':<48}{'peak RSS':>9}{'VmHWM':>7}{'over base':>10}{'peak anon':>10}"
        f"{'over base':>10}",
    ]
    for label, values in cases:
        anon = values["peak_anon_mib"]
        lines.append(
            f"{label:<48}{values['peak_mib']:>9.0f}{values.get('VmHWM', float('nan')):>7.0f}"
            f"{values['peak_mib'] - base:>10.0f}{anon:>10.0f}{anon - base_anon:>10.0f}"
        )
    memory_ratio = engine / seed
    increment_ratio = (engine - base) / (seed - base)
    anon_ratio = memory["engine"]["peak_anon_mib"] / memory["seed"]["peak_anon_mib"]
    lines += [
        f"memory ratio engine / seed, whole-process peak RSS (judged): {memory_ratio:.2f}  "
        f"{verdict(memory_ratio, MEMORY_TARGET)}",
        f"  informational: increments of peak RSS over the baseline:   {increment_ratio:.2f}  "
        f"{verdict(increment_ratio, MEMORY_TARGET)}",
        f"  informational: whole-process peak anonymous memory:         {anon_ratio:.2f}  "
        f"{verdict(anon_ratio, MEMORY_TARGET)}",
    ]
    return lines


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(
            "Time per certainty score (logits vs generate mode) and peak memory (one engine vs "
            "the seed's two base copies) at Granite 4.0 Micro's real width, random weights."
        )
    )
    parser.add_argument("--layers", type=int, default=4, help="decoder layers (real model: 40)")
    parser.add_argument("--runs", type=int, default=7, help="timed runs per mode (median)")
    parser.add_argument("--prompt-tokens", type=int, default=300, help="certainty prompt length")
    parser.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "float32", "bfloat16"],
        help="weights dtype; auto = bf16 when the CPU has native bf16, else float32",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed of the weights")
    parser.add_argument(
        "--model-dir",
        default=None,
        help="reuse (or create) the model folder here instead of a temporary one",
    )
    parser.add_argument(
        "--device",
        default="cpu",
        choices=["auto", "cpu", "cuda"],
        help="where the engine runs (cuda: static KV cache + CUDA graphs, as `serve` does)",
    )
    parser.add_argument("--skip-memory", action="store_true", help="time only")
    parser.add_argument("--skip-time", action="store_true", help="memory only")
    parser.add_argument(
        "--child", choices=["build", "time", "engine", "seed", "baseline"], help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)
    if args.skip_time and args.skip_memory:
        parser.error("--skip-time and --skip-memory together leave nothing to measure")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        return run_child(args)
    # No torch in this process: the children's ru_maxrss starts at this process's peak.
    temporary = args.model_dir is None
    model_dir = Path(args.model_dir or tempfile.mkdtemp(prefix="bench-scoring-"))
    try:
        if not (model_dir / "adapter" / "adapter_config.json").exists():
            print(f"building the model ({args.layers} layers) in {model_dir} ...", flush=True)
            spawn("build", args, model_dir)
        timing: dict[str, Any] = {}
        if not args.skip_time:
            print("timing ...", flush=True)
            timing = spawn("time", args, model_dir)
        memory: dict[str, dict[str, Any]] = {}
        if not args.skip_memory:
            for kind in ("baseline", "engine", "seed"):
                print(f"memory: {kind} ...", flush=True)
                memory[kind] = spawn(kind, args, model_dir)
    finally:
        if temporary:
            shutil.rmtree(model_dir, ignore_errors=True)
    print()
    print("\n".join(report(args, timing, memory)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
