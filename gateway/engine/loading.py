"""Where the weights go: the device, the dtype, and how to load a checkpoint with least memory."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import torch

DTypeName = Literal["auto", "float32", "bfloat16", "float16"]


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def cpu_supports_bf16() -> bool:
    """True when the CPU has native bf16 arithmetic (AVX512-BF16 or AMX)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_dtype(dtype: DTypeName, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        if device.type == "cuda" or (device.type == "cpu" and cpu_supports_bf16()):
            return torch.bfloat16
        return torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]


def checkpoint_dtype(config: Any) -> torch.dtype | None:
    """The dtype the checkpoint's weights are stored in, as its config declares it (or None)."""
    declared = getattr(config, "dtype", None)
    if isinstance(declared, str):
        declared = getattr(torch, declared, None)
    return declared if isinstance(declared, torch.dtype) else None


def base_load_plan(
    stored: torch.dtype | None, device: torch.device, dtype: torch.dtype
) -> dict[str, Any]:
    """`from_pretrained` arguments that load the base model with the least peak memory.

    `dtype` in the plan is the dtype the weights are loaded in; when it differs from `dtype`
    (the one to compute in), the caller widens the model in place after loading.

    - Not on the CPU: straight onto the device (`device_map`), in the compute dtype; each
      weight goes from the checkpoint to the device, no whole model is built in host memory.
    - On the CPU, a checkpoint narrower than the compute dtype (bf16 weights, float32 compute on
      a CPU without bf16): loading it converted keeps the whole checkpoint memory-mapped, and
      counted in the process's resident memory, until the last weight is converted (peak:
      float32 model + bf16 file). Read into memory instead (no mmap) in its own dtype, it is then
      widened one parameter at a time: the peak is the float32 model plus one parameter (reading
      holds one checkpoint file twice for a moment, its bytes and its tensors: at most the size
      of the widened model). Costs a little load time: the weights are copied once more.
    - Otherwise, in the compute dtype: an unconverted checkpoint stays memory-mapped (its pages
      are the weights, no copy), and a narrowing conversion keeps only the smaller copy.
    """
    if device.type != "cpu":
        return {"dtype": dtype, "device_map": device}
    if stored is not None and stored.is_floating_point and stored.itemsize < dtype.itemsize:
        return {"dtype": stored, "disable_mmap": True}
    return {"dtype": dtype}


def load_hint(what: str, where: str, exc: BaseException) -> str:
    """Why a model could not be loaded from `where`, and what to do about it."""
    local = os.path.exists(where)
    if not local and (where.startswith((os.sep, ".", "~")) or os.sep + os.sep in where):
        return f"could not load the {what}: no such folder {where!r}"
    hint = (
        "check that the folder holds a Hugging Face model"
        if local
        else "the Hugging Face hub could not be reached or has no such repository; "
        "download it elsewhere and point the config at the local folder "
        "(model.base / model.adapter, or GATEWAY_MODEL__BASE / GATEWAY_MODEL__ADAPTER)"
    )
    first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return f"could not load the {what} from {where!r}: {first_line}; {hint}"
