"""Loading the base model with the least peak memory: the plan, and the model it gives.

A checkpoint stored narrower than the compute dtype (bf16 weights, float32 on a CPU without bf16,
like the real Granite checkpoint on such a CPU) is loaded in its own dtype and widened in place;
the result must be the model a plain `from_pretrained(..., dtype=float32)` gives, bit for bit.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from gateway.engine.loading import base_load_plan, checkpoint_dtype
from gateway.engine.local import ADAPTER_NAME, LocalEngine, ModelSource
from gateway.types import ChatRequest, Message, SamplingParams

CPU = torch.device("cpu")
CUDA = torch.device("cuda:0")
BF16, FP16, FP32 = torch.bfloat16, torch.float16, torch.float32
QUESTION = (Message(role="user", content="What is the capital of France?"),)


@pytest.mark.parametrize(
    ("stored", "device", "dtype", "plan"),
    [
        # CPU, checkpoint narrower than the compute dtype: own dtype, no mmap, widened after.
        (BF16, CPU, FP32, {"dtype": BF16, "disable_mmap": True}),
        (FP16, CPU, FP32, {"dtype": FP16, "disable_mmap": True}),
        # CPU, same dtype (the mapped pages are the weights) or narrowing: converted on load.
        (BF16, CPU, BF16, {"dtype": BF16}),
        (FP32, CPU, FP32, {"dtype": FP32}),
        (FP32, CPU, BF16, {"dtype": BF16}),
        (BF16, CPU, FP16, {"dtype": FP16}),
        (None, CPU, FP32, {"dtype": FP32}),
        # An accelerator: straight onto it, in the compute dtype, whatever the checkpoint holds.
        (BF16, CUDA, BF16, {"dtype": BF16, "device_map": CUDA}),
        (BF16, CUDA, FP32, {"dtype": FP32, "device_map": CUDA}),
        (None, CUDA, FP16, {"dtype": FP16, "device_map": CUDA}),
    ],
)
def test_load_plan(
    stored: torch.dtype | None, device: torch.device, dtype: torch.dtype, plan: dict[str, object]
) -> None:
    assert base_load_plan(stored, device, dtype) == plan


class _Config:
    def __init__(self, dtype: object) -> None:
        self.dtype = dtype


@pytest.mark.parametrize(
    ("declared", "expected"),
    [(BF16, BF16), ("bfloat16", BF16), ("float32", FP32), (None, None), ("nonsense", None)],
)
def test_checkpoint_dtype_reads_the_config(declared: object, expected: torch.dtype | None) -> None:
    assert checkpoint_dtype(_Config(declared)) == expected


def test_checkpoint_dtype_of_a_config_without_one() -> None:
    assert checkpoint_dtype(object()) is None


@pytest.fixture(scope="module")
def bf16_source(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> ModelSource:
    """The miniature base saved in bf16 (like the real checkpoint), with the same adapter."""
    out = tmp_path_factory.mktemp("tiny-bf16")
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir / "base", dtype=BF16)
    base.save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_model_dir / "base").save_pretrained(out)
    assert checkpoint_dtype(base.config) == BF16
    return ModelSource(base=str(out), adapter=str(tiny_model_dir / "adapter"))


def _plain_engine(source: ModelSource) -> LocalEngine:
    """What loading converted on the fly gives: `from_pretrained(..., dtype=float32)`."""
    base = AutoModelForCausalLM.from_pretrained(source.base, dtype=FP32)
    model = PeftModel.from_pretrained(base, source.adapter, adapter_name=ADAPTER_NAME)
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(source.base)
    return LocalEngine(model, tokenizer, source=source)


def test_a_bf16_checkpoint_widened_in_place_equals_the_plain_float32_load(
    bf16_source: ModelSource,
) -> None:
    ours = LocalEngine.load(bf16_source, device="cpu", dtype="float32")
    plain = _plain_engine(bf16_source)

    ours_base = ours.model.get_base_model()
    assert {p.dtype for p in ours.model.parameters()} == {FP32}
    assert ours_base.config.dtype == FP32
    # The head stays tied to the embeddings: one tensor, not a widened copy of each.
    assert ours_base.lm_head.weight is ours_base.model.embed_tokens.weight

    ours_state, plain_state = ours.model.state_dict(), plain.model.state_dict()
    assert ours_state.keys() == plain_state.keys()
    for name, tensor in plain_state.items():
        assert ours_state[name].dtype == tensor.dtype, name
        assert torch.equal(ours_state[name], tensor), name
    ours_buffers = dict(ours.model.named_buffers())
    for name, tensor in plain.model.named_buffers():  # non-persistent ones too (rotary)
        assert ours_buffers[name].dtype == tensor.dtype, name
        assert torch.equal(ours_buffers[name], tensor), name

    request = ChatRequest(messages=QUESTION, sampling=SamplingParams(max_tokens=12))
    assert ours.generate(request).text == plain.generate(request).text
    prompt = ours.certainty_prompt(QUESTION, "Paris.")
    assert ours.digit_distributions([prompt]) == plain.digit_distributions([prompt])


def test_a_bf16_checkpoint_loads_unconverted_in_bf16(bf16_source: ModelSource) -> None:
    engine = LocalEngine.load(bf16_source, device="cpu", dtype="bfloat16")
    base_params = [p for n, p in engine.model.named_parameters() if "lora_" not in n]
    assert {p.dtype for p in base_params} == {BF16}
    prompt = engine.certainty_prompt(QUESTION, "Paris.")
    assert sum(engine.digit_distributions([prompt])[0]) == pytest.approx(1.0, abs=1e-3)
