#!/usr/bin/env bash
# The GPU figures of issue 12 in one call, on the lent GPU machine (its python3 has torch,
# transformers and peft; nothing else is installed there): Granite 4.0 Micro's real size
# (40 layers, random weights, bf16), the static KV cache with CUDA graphs against the eager
# transformers + PEFT forward, and one engine's memory against the seed's quick start.
# Run from the repository root: bench/gpu.sh [extra bench/gpu.py options]
# Each part runs within its share of --budget-s and reports what it measured even when a later
# part fails or runs out of time; `timeout` is the backstop (the table is printed on SIGTERM).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
"$PYTHON" -c 'import torch, transformers, peft; assert torch.cuda.is_available(), "no CUDA device"; print("torch", torch.__version__, "cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version(), "transformers", transformers.__version__, "peft", peft.__version__, torch.cuda.get_device_name())'
exec timeout -k 15 480 "$PYTHON" bench/gpu.py --device cuda --layers 40 --dtype bfloat16 \
  --max-tokens 64 --clients 1,16,32 --max-context 1024 --budget-s 450 "$@"
