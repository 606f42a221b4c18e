"""The static decoder (preallocated KV cache, the path CUDA graphs replay) against the eager one.

On this CPU the static decoder runs its decoding step eagerly: the same function a CUDA graph
captures (`granite.decode_step`), with the same shapes. Its tokens and scores must be the eager
decoder's (transformers + PEFT) for the same rows. `EagerGraph` stands in for a captured graph
(static inputs and output, replayed in place), so that the replay path and its fallbacks run here.
"""

from __future__ import annotations

import copy
import logging

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from gateway.engine import granite
from gateway.engine.granite import GraniteWeights, StaticKV, Unsupported
from gateway.engine.local import DecodeRow, LocalEngine
from gateway.engine.static import StaticDecoder, _Graph, batch_buckets, context_buckets
from gateway.errors import ContextLengthExceeded
from gateway.types import ChatRequest, Message, SamplingParams

QUESTIONS = [
    "What is the capital of France?",
    "hi",
    "Which ocean is the largest on the earth, and why is it so large compared to the others?",
    "Who wrote the first document about the river and the mountain?",
    "a b c",
    "When was the city of rome built and by which people?",
]


def _static(engine: LocalEngine, *, rows: int = 4, context: int = 256) -> LocalEngine:
    return LocalEngine(
        engine.model,
        engine.tokenizer,
        source=engine.source,
        decoder="static",
        max_batch_size=rows,
        static_context=context,
    )


@pytest.fixture(scope="module")
def static(engine: LocalEngine) -> LocalEngine:
    return _static(engine)


def _rows(engine: LocalEngine, adapters: list[bool], max_tokens: list[int]) -> list[DecodeRow]:
    rows = []
    for i, (adapter, tokens) in enumerate(zip(adapters, max_tokens, strict=True)):
        request = ChatRequest(
            messages=(Message("user", QUESTIONS[i % len(QUESTIONS)]),),
            sampling=SamplingParams(max_tokens=tokens, temperature=0.0),
        )
        rows.append(DecodeRow(engine.answer_prompt(request), request.sampling, adapter=adapter))
    return rows


def _tokens(engine: LocalEngine, rows: list[DecodeRow]) -> list[list[int]]:
    engine.decode(rows)
    return [row.generated for row in rows]


def test_static_decoder_is_chosen_for_cuda_only_by_default(engine: LocalEngine) -> None:
    auto = LocalEngine(engine.model, engine.tokenizer, source=engine.source, decoder="auto")
    assert type(auto.decoder).__name__ == "EagerDecoder"  # this machine's device is the CPU


def test_greedy_tokens_equal_the_eager_decoders_for_mixed_rows_of_every_length(
    engine: LocalEngine, static: LocalEngine
) -> None:
    # More rows than slots (6 > 4), adapter and base rows mixed, rows leaving at different
    # steps: slots are reused and the last row moves into each freed slot.
    adapters = [False, True, False, True, True, False]
    lengths = [3, 12, 7, 1, 20, 9]
    eager = _tokens(engine, _rows(engine, adapters, lengths))
    assert _tokens(static, _rows(static, adapters, lengths)) == eager
    assert any(len(tokens) > 4 for tokens in eager)


def test_rows_that_join_between_steps_decode_as_they_would_alone(
    engine: LocalEngine, static: LocalEngine
) -> None:
    first = _rows(static, [False, False], [16, 4])
    joining = _rows(static, [True, False, False], [6, 10, 3])
    pending = [joining]

    def admit(free: int) -> list[DecodeRow]:
        if not pending or len(first[1].generated) < 2:
            return []
        taken = pending.pop()
        assert free >= 2
        return taken

    static.decode(first, admit=admit, max_rows=4)  # 3 more than 2 free slots: they wait
    assert first[1].finish_reason is not None  # a row left, and another took its slot
    for row in first + joining:
        alone = DecodeRow(row.prompt_ids, row.sampling, adapter=row.adapter)
        engine.decode([alone])
        assert row.generated == alone.generated


def test_certainty_distribution_equals_the_eager_one(
    engine: LocalEngine, static: LocalEngine
) -> None:
    prompts = [row.prompt_ids for row in _rows(engine, [True] * 5, [1] * 5)]
    eager = engine.digit_distributions(prompts)
    ours = static.digit_distributions(prompts)
    for a, b in zip(eager, ours, strict=True):
        assert max(abs(x - y) for x, y in zip(a, b, strict=True)) < 1e-5
        assert sum(b) == pytest.approx(1.0)


def test_bfloat16_certainty_matches_eager_within_a_thousandth(engine: LocalEngine) -> None:
    bf16 = LocalEngine.load(engine.source, device="cpu", dtype="bfloat16")
    static = _static(bf16)
    prompts = [row.prompt_ids for row in _rows(bf16, [True] * 4, [1] * 4)]
    for a, b in zip(
        bf16.digit_distributions(prompts), static.digit_distributions(prompts), strict=True
    ):
        assert max(abs(x - y) for x, y in zip(a, b, strict=True)) < 1e-3


def test_stop_strings_streaming_and_cancellation_work_on_the_static_path(
    engine: LocalEngine, static: LocalEngine
) -> None:
    eager_row = _rows(engine, [False], [24])[0]
    engine.decode([eager_row])
    assert len(eager_row.text) > 6
    stop = eager_row.text[3:6]
    pieces: list[str] = []
    row = _rows(static, [False], [24])[0]
    row.sampling = SamplingParams(max_tokens=24, temperature=0.0, stop=(stop,))
    row.on_text = pieces.append
    steps = 0

    def cancelled() -> bool:
        nonlocal steps
        steps += 1
        return steps > 3

    gone = _rows(static, [False], [24])[0]
    gone.cancelled = cancelled
    static.decode([row, gone])
    assert row.finish_reason == "stop"
    assert row.text == eager_row.text[: eager_row.text.index(stop)]
    assert "".join(pieces) == row.text
    assert gone.finish_reason is None  # stopped without a result
    assert len(gone.generated) <= 3


def test_sampled_rows_with_a_seed_repeat(static: LocalEngine) -> None:
    def sampled() -> list[int]:
        row = _rows(static, [False], [12])[0]
        row.sampling = SamplingParams(max_tokens=12, temperature=0.9, top_p=0.9, seed=7)
        static.decode([row])
        return row.generated

    assert sampled() == sampled()


def test_the_static_cache_bounds_the_context(engine: LocalEngine) -> None:
    small = _static(engine, rows=2, context=32)
    assert small.max_context == 32
    long = ChatRequest(messages=(Message("user", " ".join(["word"] * 40)),))
    with pytest.raises(ContextLengthExceeded):
        small.answer_prompt(long)


def test_buckets_cover_every_batch_size_and_context() -> None:
    assert batch_buckets(8) == (1, 2, 4, 8)
    assert batch_buckets(12) == (1, 2, 4, 8, 12)
    assert context_buckets(4096) == (256, 512, 1024, 2048, 4096)
    assert context_buckets(300) == (256, 300)


def test_the_step_runs_eagerly_without_cuda(static: LocalEngine) -> None:
    decoder = static.decoder
    assert isinstance(decoder, StaticDecoder)
    assert not decoder.use_graphs
    before = decoder.steps_eager
    static.decode(_rows(static, [False], [4]))
    assert decoder.steps_eager > before
    assert decoder.steps_replayed == 0


def test_a_model_of_another_shape_is_refused(engine: LocalEngine) -> None:
    class NotGranite(torch.nn.Module):
        config = type("Config", (), {"model_type": "llama"})()

    with pytest.raises(Unsupported):
        GraniteWeights.from_model(NotGranite())


def test_a_cache_that_does_not_fit_stops_start_up_with_both_settings_named(
    static: LocalEngine,
) -> None:
    from gateway.engine.static import _check_fits
    from gateway.errors import ModelLoadError

    decoder = static.decoder
    assert isinstance(decoder, StaticDecoder)
    weights = decoder.weights
    needed = StaticKV.nbytes(weights, slots=8, context=4096)
    # 2 layers x (keys, values) x 8 rows x kv heads x 4096 positions x head_dim x 4 bytes
    assert needed == 2 * len(weights.layers) * 8 * weights.kv_heads * 4096 * weights.head_dim * 4
    _check_fits(weights, 8, 4096, free_bytes=2 * needed)  # fits: nothing said
    with pytest.raises(ModelLoadError, match=r"engine\.max_batch_size=8.*engine\.max_context=4096"):
        _check_fits(weights, 8, 4096, free_bytes=needed // 2)


class EagerGraph:
    """A captured CUDA graph's stand-in on the CPU: static input and output tensors of its own,
    and a `replay` that runs the step over them, reading what `StaticDecoder` copied in."""

    def __init__(self, decoder: StaticDecoder, rows: int, context: int, *, fails: bool) -> None:
        self.decoder, self.context, self.fails = decoder, context, fails
        self.ids = torch.full((rows,), decoder.pad_id, dtype=torch.long)
        self.positions = torch.zeros(rows, dtype=torch.long)
        self.gate = torch.zeros((rows, 1, 1))
        self.logits = torch.full((rows, decoder.weights.lm_head.shape[0]), float("nan"))

    def replay(self) -> None:
        if self.fails:
            raise RuntimeError("CUDA error: an illegal memory access was encountered\nmore")
        d = self.decoder
        step = granite.decode_step(
            d.weights, self.ids, self.positions, self.gate, d.kv, self.context
        )
        self.logits.copy_(step)

    def pool(self) -> None:
        return None

    def captured(self) -> _Graph:
        return _Graph(self, self.ids, self.positions, self.gate, self.logits)  # type: ignore[arg-type]


def _graphed(
    engine: LocalEngine,
    monkeypatch: pytest.MonkeyPatch,
    *,
    capture_fails_from_rows: int | None = None,
    replay_fails: bool = False,
) -> tuple[LocalEngine, StaticDecoder]:
    """A static engine (4 slots of 256 tokens) whose `capture` made `EagerGraph`s."""
    static = _static(engine)
    decoder = static.decoder
    assert isinstance(decoder, StaticDecoder)

    def capture(rows: int, context: int, pool: object) -> _Graph:
        if capture_fails_from_rows is not None and rows >= capture_fails_from_rows:
            raise RuntimeError("CUDA error: operation not permitted when stream is capturing")
        return EagerGraph(decoder, rows, context, fails=replay_fails).captured()

    monkeypatch.setattr(decoder, "_capture", capture)
    decoder.capture()
    return static, decoder


def _warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno == logging.WARNING]


ADAPTERS = [False, True, False, True, True, False]
LENGTHS = [3, 12, 7, 1, 20, 9]


def test_replayed_steps_decode_as_the_eager_decoder(
    engine: LocalEngine, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    static, decoder = _graphed(engine, monkeypatch)
    assert set(decoder.graphs) == {(1, 256), (2, 256), (4, 256)}
    eager = _tokens(engine, _rows(engine, ADAPTERS, LENGTHS))
    assert _tokens(static, _rows(static, ADAPTERS, LENGTHS)) == eager
    assert decoder.steps_replayed > 0
    assert decoder.steps_eager == 0
    assert decoder.capture_error is None
    assert not _warnings(caplog)


def test_a_failed_capture_leaves_the_remaining_shapes_eager_with_one_warning(
    engine: LocalEngine, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="gateway.engine.static"):
        static, decoder = _graphed(engine, monkeypatch, capture_fails_from_rows=2)
    assert set(decoder.graphs) == {(1, 256)}
    assert decoder.capture_error is not None
    assert decoder.capture_error.startswith("RuntimeError: CUDA error: operation not permitted")
    assert len(_warnings(caplog)) == 1
    eager = _tokens(engine, _rows(engine, ADAPTERS, LENGTHS))
    assert _tokens(static, _rows(static, ADAPTERS, LENGTHS)) == eager
    assert decoder.steps_eager > 0  # several rows: the shapes without a graph
    assert decoder.steps_replayed > 0  # the last row alone: the one graph captured


def test_a_failed_replay_drops_its_graph_and_the_step_runs_eagerly(
    engine: LocalEngine, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    static, decoder = _graphed(engine, monkeypatch, replay_fails=True)
    eager = _tokens(engine, _rows(engine, ADAPTERS, LENGTHS))
    with caplog.at_level(logging.WARNING, logger="gateway.engine.static"):
        assert _tokens(static, _rows(static, ADAPTERS, LENGTHS)) == eager
    assert decoder.steps_replayed == 0
    used = {(r.__dict__["rows"], r.__dict__["context"]) for r in _warnings(caplog)}
    assert len(_warnings(caplog)) == len(used) >= 2  # one line per shape, not one per step
    assert used.isdisjoint(decoder.graphs)
    assert all("illegal memory access" in r.__dict__["error"] for r in _warnings(caplog))
    assert all("more" not in r.__dict__["error"] for r in _warnings(caplog))


def test_attention_on_cuda_leaves_out_cudnn_and_restores_the_settings_after() -> None:
    before = torch.backends.cuda.cudnn_sdp_enabled()
    with granite.attention_kernels(torch.device("cuda")):
        assert not torch.backends.cuda.cudnn_sdp_enabled()
        assert torch.backends.cuda.flash_sdp_enabled()
        assert torch.backends.cuda.mem_efficient_sdp_enabled()
        assert torch.backends.cuda.math_sdp_enabled()
    assert torch.backends.cuda.cudnn_sdp_enabled() == before
    with granite.attention_kernels(torch.device("cpu")):
        assert torch.backends.cuda.cudnn_sdp_enabled() == before  # torch's own choice


class _Ops(TorchDispatchMode):
    """Records the aten operations run; whether any indexed with a boolean mask; and the
    devices of tensors (not scalars) that operations were given off `device`."""

    def __init__(self, device: str) -> None:
        super().__init__()
        self.device = device
        self.names: set[str] = set()
        self.boolean_index = False
        self.foreign: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        self.names.add(func.overloadpacket.__name__)
        for arg in args:
            group = arg if isinstance(arg, (list, tuple)) else [arg]
            tensors = [a for a in group if isinstance(a, torch.Tensor)]
            if isinstance(arg, (list, tuple)) and any(a.dtype == torch.bool for a in tensors):
                self.boolean_index = True
            self.foreign |= {
                f"{func.overloadpacket.__name__}: {a.device}"
                for a in tensors
                if a.device.type != self.device and a.dim() > 0
            }
        return func(*args, **(kwargs or {}))


def test_a_step_and_a_score_make_every_tensor_on_the_weights_device(engine: LocalEngine) -> None:
    # The meta device stands in for CUDA: a tensor made on the CPU by default (an index, a
    # position, a gate) and given to an operation with the weights' shows up here as it would
    # there, where it would fail or, under capture, be a copy from the host.
    meta = copy.deepcopy(engine.model).to("meta")
    static = _static(engine).decoder
    assert isinstance(static, StaticDecoder)
    decoder = StaticDecoder(
        GraniteWeights.from_model(meta),
        static.stepper,
        pad_id=static.pad_id,
        max_rows=4,
        max_context=256,
        graphs=True,
    )
    assert not decoder.use_graphs  # captured on CUDA only
    w, on = decoder.weights, {"device": "meta"}
    gate = torch.ones((4, 1, 1), **on)
    with torch.inference_mode(), _Ops("meta") as ops:
        step = granite.decode_step(
            w,
            torch.ones(4, dtype=torch.long, **on),
            torch.ones(4, dtype=torch.long, **on),
            gate,
            decoder.kv,
            256,
        )
        hidden = granite.prefill(
            w, torch.ones((4, 9), dtype=torch.long, **on), gate, decoder.kv, torch.arange(4, **on)
        )
        granite.logits(w, hidden[:, -1], torch.arange(3, **on))
    assert not ops.foreign
    assert (step.device.type, step.dtype, step.shape[0]) == ("meta", torch.float32, 4)
    # and the decoder's own plumbing around them: inputs copied in, the rows' last positions
    step = decoder._run(4, 256, [5, 6, 7, 0], [3, 9, 1, 0], [True, False, True, False])
    assert step.device.type == "meta"
    digits = torch.tensor([1, 2, 3], **on)
    score = decoder.last_logits([[1, 2, 3], [4, 5]], adapter=True, token_ids=digits)
    assert (score.device.type, tuple(score.shape)) == ("meta", (2, 3))


HOST_SYNCS = {
    "_local_scalar_dense",  # .item(), .tolist(), int(tensor), `if tensor`
    "nonzero",
    "masked_select",
    "repeat_interleave",
    "_unique2",
    "unique_consecutive",
    "lift_fresh",  # torch.tensor(python data)
    "lift_fresh_copy",
    "equal",
    "is_nonzero",
}


def test_the_captured_step_runs_no_operation_that_waits_for_the_device(static: LocalEngine) -> None:
    # What a CUDA graph cannot capture: a copy to the host, a shape read from data, a tensor
    # made from Python data. (On the CPU attention runs its CPU kernel; the rest is the same.)
    decoder = static.decoder
    assert isinstance(decoder, StaticDecoder)
    ids = torch.tensor([5, 6, 7, decoder.pad_id])
    positions = torch.tensor([3, 9, 1, 0])
    gate = torch.tensor([1.0, 0.0, 1.0, 0.0])[:, None, None]
    with torch.inference_mode(), _Ops("cpu") as ops:
        granite.decode_step(decoder.weights, ids, positions, gate, decoder.kv, 256)
    assert "index_put_" in ops.names  # the recording sees the step's own operations
    assert not ops.names & HOST_SYNCS
    assert not ops.boolean_index
