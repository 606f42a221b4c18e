#!/usr/bin/env bash
# The GPU figures of issue 12 in one call, on the lent GPU machine (its python3 has torch,
# transformers and peft; nothing else is installed there): Granite 4.0 Micro's real size
# (40 layers, random weights, bf16), the static KV cache with CUDA graphs against the eager
# transformers + PEFT forward, and one engine's memory against the seed's quick start.
# Run from the repository root: bench/gpu.sh [extra bench/gpu.py options]
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
"$PYTHON" -c 'import torch; assert torch.cuda.is_available(), "no CUDA device"; print(torch.__version__, torch.cuda.get_device_name())'
exec timeout 480 "$PYTHON" bench/gpu.py --device cuda --layers 40 --dtype bfloat16 \
  --max-tokens 64 --clients 1,16,32 --max-context 1024 "$@"
