"""The local engine on the miniature model: prompts, one-pass scoring, generation, the adapter."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from gateway.certainty import REPLY_PREFIX, Certainty, digit_confidence
from gateway.engine.local import DecodeRow, LocalEngine, ModelSource
from gateway.engine.tiny import ADAPTER_SUBFOLDER
from gateway.errors import ContextLengthExceeded
from gateway.types import ChatRequest, Message, SamplingParams

DEFAULT_SYSTEM = (
    "You are a helpful assistant. Please ensure responses are professional, accurate, and safe."
)
QUESTION = (Message(role="user", content="What is the capital of France?"),)


def _text(engine: LocalEngine, ids: list[int]) -> str:
    return str(engine.tokenizer.decode(ids))


def test_prompt_without_system_message_gets_the_default_one(engine: LocalEngine) -> None:
    text = _text(engine, engine.render([m.as_dict() for m in QUESTION]))
    assert text == (
        f"<|start_of_role|>system<|end_of_role|>{DEFAULT_SYSTEM}<|end_of_text|>\n"
        "<|start_of_role|>user<|end_of_role|>What is the capital of France?<|end_of_text|>\n"
        "<|start_of_role|>assistant<|end_of_role|>"
    )


def test_prompt_with_system_message_uses_it_instead_of_the_default(engine: LocalEngine) -> None:
    messages = [{"role": "system", "content": "Be brief."}, QUESTION[0].as_dict()]
    text = _text(engine, engine.render(messages))
    assert text.startswith("<|start_of_role|>system<|end_of_role|>Be brief.<|end_of_text|>\n")
    assert DEFAULT_SYSTEM not in text


def test_documents_are_rendered_inside_the_system_turn(engine: LocalEngine) -> None:
    documents = [{"doc_id": "1", "text": "Paris is the capital of France."}]
    text = _text(engine, engine.render([QUESTION[0].as_dict()], documents))
    system_turn = text.split("<|end_of_text|>")[0]
    assert "<documents>" in system_turn
    assert '{"doc_id": "1", "text": "Paris is the capital of France."}' in system_turn
    assert system_turn.index("<documents>") < system_turn.index("</documents>")


DOCUMENTS_PREAMBLE = (
    "You are a helpful assistant with access to the following documents. You may use one or "
    "more documents to assist with the user query.\n\nYou are given a list of documents within "
    "<documents></documents> XML tags:\n<documents>\n"
)


def test_documents_open_the_system_turn_with_granites_own_sentence(engine: LocalEngine) -> None:
    documents = [{"doc_id": "1", "text": "Paris."}, {"doc_id": "2", "text": "Lyon."}]
    text = _text(engine, engine.render([QUESTION[0].as_dict()], documents))
    assert text.startswith(
        "<|start_of_role|>system<|end_of_role|>"
        + DOCUMENTS_PREAMBLE
        + '{"doc_id": "1", "text": "Paris."}\n{"doc_id": "2", "text": "Lyon."}\n</documents>\n\n'
        "Write the response to the user's input by strictly aligning with the facts"
    )
    assert DEFAULT_SYSTEM not in text


def test_documents_follow_the_requests_own_system_message(engine: LocalEngine) -> None:
    messages = [{"role": "system", "content": "Be brief."}, QUESTION[0].as_dict()]
    text = _text(engine, engine.render(messages, [{"text": "Paris."}]))
    assert text.startswith(
        "<|start_of_role|>system<|end_of_role|>Be brief.\n\n" + DOCUMENTS_PREAMBLE
    )


def test_certainty_prompt_adds_answer_and_certainty_turn_with_same_documents(
    engine: LocalEngine,
) -> None:
    documents = [{"text": "Paris."}]
    ids = engine.certainty_prompt(QUESTION, "Paris.", documents)
    text = _text(engine, ids)
    assert text.endswith(
        "<|start_of_role|>assistant<|end_of_role|>Paris.<|end_of_text|>\n"
        "<|start_of_role|>user<|end_of_role|><certainty><|end_of_text|>\n"
        "<|start_of_role|>assistant<|end_of_role|>"
    )
    assert '{"text": "Paris."}' in text


def test_forced_prefix_tokenizes_the_same_alone_and_in_context(engine: LocalEngine) -> None:
    prompt = engine.certainty_prompt(QUESTION, "Paris.")
    in_context = engine.tokenizer.encode(
        _text(engine, prompt) + REPLY_PREFIX + "7", add_special_tokens=False
    )
    assert in_context[: len(prompt)] == prompt
    assert in_context[len(prompt) : len(prompt) + len(engine.prefix_ids)] == engine.prefix_ids
    assert in_context[-1] == engine.digit_ids[7]


def test_each_digit_is_one_token(engine: LocalEngine) -> None:
    assert len(set(engine.digit_ids)) == 10
    for digit, token in enumerate(engine.digit_ids):
        assert engine.tokenizer.decode([token]) == str(digit)


def test_logits_mode_returns_a_distribution_that_sums_to_one(engine: LocalEngine) -> None:
    result = engine.score(QUESTION, "Paris.", mode="logits")
    assert isinstance(result, Certainty)
    assert result.distribution is not None
    assert len(result.distribution) == 10
    assert math.fsum(result.distribution) == pytest.approx(1.0)
    assert result.score == max(range(10), key=lambda d: result.distribution[d])  # type: ignore[index]
    assert result.confidence == pytest.approx(digit_confidence(result.score))
    assert 0.05 <= result.expected_confidence <= 0.95


@pytest.mark.parametrize(
    "answer", ["Paris.", "The capital of France is Paris.", "I do not know.", "Blue."]
)
def test_generate_mode_parses_a_real_reply_equal_to_logits_argmax(
    engine: LocalEngine, answer: str
) -> None:
    prompt = engine.certainty_prompt(QUESTION, answer)
    generated = engine.decode([DecodeRow(prompt, SamplingParams(max_tokens=15), adapter=True)])[0]
    assert generated.text.startswith(REPLY_PREFIX)
    by_generation = engine.score(QUESTION, answer, mode="generate")
    by_logits = engine.score(QUESTION, answer, mode="logits")
    assert isinstance(by_generation, Certainty), generated.text
    assert isinstance(by_logits, Certainty)
    assert by_generation.score == by_logits.score


def test_batched_scoring_matches_one_at_a_time(engine: LocalEngine) -> None:
    prompts = [
        engine.certainty_prompt(QUESTION, answer) for answer in ("Paris.", "Lyon is big.", "No.")
    ]
    batched = engine.digit_distributions(prompts)
    single = [engine.digit_distributions([p])[0] for p in prompts]
    for a, b in zip(batched, single, strict=True):
        assert a == pytest.approx(b, abs=1e-5)


def test_answers_come_from_the_plain_base_model(engine: LocalEngine, tiny_model_dir: Path) -> None:
    request = ChatRequest(messages=QUESTION, sampling=SamplingParams(max_tokens=12))
    ours = engine.generate(request)
    plain = AutoModelForCausalLM.from_pretrained(tiny_model_dir / "base", dtype=torch.float32)
    prompt = torch.tensor([engine.answer_prompt(request)])
    with torch.inference_mode():
        out = plain.generate(
            prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=12, do_sample=False
        )
    reference = engine.tokenizer.decode(out[0, prompt.shape[1] :], skip_special_tokens=True)
    assert ours.text == reference


def test_scoring_uses_the_adapter(engine: LocalEngine) -> None:
    prompt = engine.certainty_prompt(QUESTION, "Paris.")
    with_adapter = engine.digit_distributions([prompt])[0]
    with engine.model.disable_adapter():
        without = engine.digit_distributions([prompt])[0]
    assert max(abs(a - b) for a, b in zip(with_adapter, without, strict=True)) > 1e-3


def test_generation_stops_at_max_tokens_with_finish_reason_length(engine: LocalEngine) -> None:
    sampling = SamplingParams(max_tokens=3, temperature=1.0, seed=1)
    result = engine.generate(ChatRequest(messages=QUESTION, sampling=sampling))
    assert result.completion_tokens == 3
    assert result.finish_reason == "length"
    assert result.prompt_tokens == len(engine.answer_prompt(ChatRequest(messages=QUESTION)))


def test_generation_ends_at_a_stop_sequence_and_leaves_it_out(engine: LocalEngine) -> None:
    free = engine.generate(
        ChatRequest(messages=QUESTION, sampling=SamplingParams(max_tokens=24))
    ).text
    assert len(free) > 3
    stop = free[2:4]
    stopped = engine.generate(
        ChatRequest(messages=QUESTION, sampling=SamplingParams(max_tokens=24, stop=(stop,)))
    )
    assert stopped.finish_reason == "stop"
    assert stopped.text == free[: free.index(stop)]


def test_same_seed_gives_same_sample_and_streams_the_same_text(engine: LocalEngine) -> None:
    sampling = SamplingParams(max_tokens=16, temperature=1.0, top_p=0.9, seed=1234)
    request = ChatRequest(messages=QUESTION, sampling=sampling)
    pieces: list[str] = []
    first = engine.generate(request, on_text=pieces.append)
    second = engine.generate(request)
    assert first.text == second.text
    assert "".join(pieces) == first.text


def test_different_seeds_sample_different_answers(engine: LocalEngine) -> None:
    texts = {
        engine.generate(
            ChatRequest(
                messages=QUESTION,
                sampling=SamplingParams(max_tokens=16, temperature=1.5, seed=seed),
            )
        ).text
        for seed in range(4)
    }
    assert len(texts) > 1


def test_a_prompt_longer_than_the_context_is_refused(tiny_source: ModelSource) -> None:
    small = LocalEngine.load(tiny_source, device="cpu", dtype="float32", max_context=32)
    with pytest.raises(ContextLengthExceeded):
        small.generate(ChatRequest(messages=QUESTION))


def test_adapter_loads_from_the_real_repository_subfolder_layout(tiny_model_dir: Path) -> None:
    source = ModelSource(
        base=str(tiny_model_dir / "base"),
        adapter=str(tiny_model_dir / "adapter"),
        adapter_subfolder=ADAPTER_SUBFOLDER,
    )
    from_subfolder = LocalEngine.load(source, device="cpu", dtype="float32")
    root = LocalEngine.load(
        ModelSource(base=source.base, adapter=source.adapter), device="cpu", dtype="float32"
    )
    prompt = root.certainty_prompt(QUESTION, "Paris.")
    assert from_subfolder.digit_distributions([prompt])[0] == pytest.approx(
        root.digit_distributions([prompt])[0]
    )
