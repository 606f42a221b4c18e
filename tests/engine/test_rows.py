"""A decoding row's text, decoded a piece at a time: at every step the text of the whole answer,
and stop strings found wherever they land; and each row's next token, chosen for all rows at
once: greedy, at its temperature, within its top-p nucleus, from its own seed
(`gateway.engine.rows`)."""

from __future__ import annotations

import random
from typing import Any

import pytest
import torch
from transformers.convert_slow_tokenizer import bytes_to_unicode

from gateway.engine import rows as rows_module
from gateway.engine.local import LocalEngine
from gateway.engine.rows import DecodeRow, RowStepper, decodes_by_pieces
from gateway.types import SamplingParams

TEXTS = [
    "The capital of France is Paris. It has 2,165,423 people (2019).",
    "Ünïcödé: naïve café, 東京は日本の首都です, emoji 😀👍🏽 and 𝔘𝔫𝔦𝔠𝔬𝔡𝔢!",
    "  spaces   and\ttabs\nand new\n\nlines , . ; : ' \" ` ~",
]


def stepper(engine: LocalEngine, *, incremental: bool | None = None) -> RowStepper:
    return RowStepper(engine.tokenizer, eos_id=-1, max_context=1_000_000, incremental=incremental)


def row(max_tokens: int = 10_000, stop: tuple[str, ...] = ()) -> DecodeRow:
    return DecodeRow(
        prompt_ids=[1], sampling=SamplingParams(max_tokens=max_tokens, stop=stop), adapter=False
    )


def tokens_of(engine: LocalEngine, text: str) -> list[int]:
    ids: list[int] = engine.tokenizer(text, add_special_tokens=False)["input_ids"]
    return ids


def test_the_miniature_tokenizer_decodes_by_pieces(engine: LocalEngine) -> None:
    assert decodes_by_pieces(engine.tokenizer)  # byte-level BPE, as Granite's


@pytest.mark.parametrize("text", TEXTS)
def test_each_step_has_the_whole_answers_text(engine: LocalEngine, text: str) -> None:
    ids = tokens_of(engine, text)
    # Every character's bytes as tokens of their own, too: a character split over tokens.
    single_bytes = [engine.tokenizer.convert_tokens_to_ids(t) for t in _byte_tokens(text)]
    assert engine.tokenizer.decode(single_bytes) == text
    ids += single_bytes
    ids += [engine.tokenizer.convert_tokens_to_ids("<|start_of_role|>")]  # special: skipped
    ids += tokens_of(engine, " and on.")
    steps, decoding = stepper(engine), row()
    assert steps.incremental
    for count, token in enumerate(ids, start=1):
        steps.advance(decoding, token)
        expected = engine.tokenizer.decode(ids[:count], skip_special_tokens=True)
        assert decoding.text == expected, count
    assert decoding.settled == len(ids)  # it ends on a whole character


def test_random_token_sequences_read_as_the_whole_decode(engine: LocalEngine) -> None:
    chance = random.Random(7)
    vocabulary = len(engine.tokenizer)
    for _ in range(40):
        ids = [chance.randrange(vocabulary) for _ in range(chance.randrange(1, 60))]
        steps, decoding = stepper(engine), row()
        for count, token in enumerate(ids, start=1):
            steps.advance(decoding, token)
            assert decoding.text == engine.tokenizer.decode(ids[:count], skip_special_tokens=True)


@pytest.mark.parametrize("incremental", [True, False])
@pytest.mark.parametrize(
    ("text", "stop", "kept"),
    [
        ("one two three four", ("three",), "one two "),
        ("one two three four", ("four", "two"), "one "),  # the earlier of two
        ("a long answer, then STOPPED at the end", ("STOP",), "a long answer, then "),
        ("東京は日本の首都です", ("首都",), "東京は日本の"),
        ("x" * 300 + "END" + "y" * 10, ("END",), "x" * 300),
    ],
)
def test_a_stop_string_ends_the_text_wherever_it_lands(
    engine: LocalEngine, incremental: bool, text: str, stop: tuple[str, ...], kept: str
) -> None:
    steps, decoding = stepper(engine, incremental=incremental), row(stop=stop)
    streamed: list[str] = []
    decoding.on_text = streamed.append
    for token in tokens_of(engine, text):
        steps.advance(decoding, token)
        if decoding.finish_reason is not None:
            break
    assert decoding.finish_reason == "stop"
    assert decoding.text == kept
    assert "".join(streamed) == kept


@pytest.mark.parametrize("incremental", [True, False])
def test_overlapping_stop_strings_end_the_text_at_the_earliest(
    engine: LocalEngine, incremental: bool
) -> None:
    # A token of three or more letters brings both stop strings in one step; the one listed
    # first starts later.
    token, text = next(
        (i, t)
        for i in range(len(engine.tokenizer))
        if len(t := engine.tokenizer.decode([i])) >= 3 and t.isalpha()
    )
    steps, decoding = stepper(engine, incremental=incremental), row(stop=(text[1:3], text[:2]))
    steps.advance(decoding, token)
    assert decoding.finish_reason == "stop"
    assert decoding.text == ""


def test_a_stop_string_inside_one_long_token_run_is_found(engine: LocalEngine) -> None:
    # All of it arrives in one step's new text, far from where the settled text ended.
    steps, decoding = stepper(engine), row(stop=("END",))
    steps.advance(decoding, tokens_of(engine, "start")[0])
    for token in tokens_of(engine, " middle END and more"):
        steps.advance(decoding, token)
        if decoding.finish_reason is not None:
            break
    assert decoding.text.endswith("middle ")
    assert "END" not in decoding.text


def test_a_tokenizer_that_cleans_up_spaces_is_decoded_whole(engine: LocalEngine) -> None:
    class CleansUp:
        """The miniature tokenizer, with the space clean-up transformers 4 did ("a ." -> "a.")."""

        backend_tokenizer = engine.tokenizer.backend_tokenizer

        def __call__(self, text: str, **options: Any) -> Any:
            return engine.tokenizer(text, **options)

        def decode(self, ids: list[int], **options: Any) -> str:
            text: str = engine.tokenizer.decode(ids, **options)
            for before, after in ((" .", "."), (" ,", ","), (" ?", "?"), (" !", "!")):
                text = text.replace(before, after)
            return text

    assert not decodes_by_pieces(CleansUp())
    assert not RowStepper(CleansUp(), eos_id=-1, max_context=10).incremental


def _byte_tokens(text: str) -> list[str]:
    """The byte-level tokens of `text`'s bytes, one per byte (GPT-2's byte alphabet)."""
    alphabet = bytes_to_unicode()
    return [alphabet[b] for b in text.encode()]


# ------------------------------------------------------------------------------ token choice

LOGITS = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0])


def sampled_rows(count: int, temperature: float = 1.0, top_p: float = 1.0) -> list[DecodeRow]:
    rows = [
        DecodeRow(
            prompt_ids=[1],
            sampling=SamplingParams(temperature=temperature, top_p=top_p, seed=seed),
            adapter=False,
        )
        for seed in range(count)
    ]
    RowStepper.seed(rows, torch.device("cpu"))
    return rows


def frequencies(tokens: list[int]) -> torch.Tensor:
    return torch.bincount(torch.tensor(tokens), minlength=len(LOGITS)).float() / len(tokens)


def picker() -> RowStepper:
    return RowStepper(None, eos_id=-1, max_context=10, incremental=False)


def test_sampled_rows_draw_from_the_softmax_at_each_ones_temperature() -> None:
    temperatures = (1.0, 0.5, 2.0)
    rows = sampled_rows(8000 * len(temperatures))  # one batch, the temperatures interleaved
    for index, row in enumerate(rows):
        row.sampling = SamplingParams(temperature=temperatures[index % len(temperatures)])
    tokens = picker().pick_all(LOGITS.expand(len(rows), -1), rows)
    for index, temperature in enumerate(temperatures):
        expected = torch.softmax(LOGITS / temperature, dim=-1)
        drawn = frequencies(tokens[index :: len(temperatures)])
        assert torch.allclose(drawn, expected, atol=0.02), temperature


def assert_nucleus_and_whole_rows_drawn_apart() -> None:
    """Rows at top-p 0.8 and rows without top-p, interleaved in one batch: the first draw from
    their nucleus alone (p = 0.56, 0.21, 0.13, ...: the first three), the others from every
    token."""
    nucleus = sampled_rows(4000, top_p=0.8)
    whole = sampled_rows(4000)
    rows = [row for pair in zip(nucleus, whole, strict=True) for row in pair]
    tokens = picker().pick_all(LOGITS.expand(len(rows), -1), rows)
    kept = torch.softmax(LOGITS, dim=-1)
    kept[3:] = 0.0
    assert torch.allclose(frequencies(tokens[0::2]), kept / kept.sum(), atol=0.02)
    assert torch.allclose(frequencies(tokens[1::2]), torch.softmax(LOGITS, dim=-1), atol=0.02)


def test_top_p_draws_only_from_the_nucleus_and_leaves_other_rows_whole() -> None:
    assert_nucleus_and_whole_rows_drawn_apart()


def test_greedy_rows_take_the_arg_max_among_sampled_ones() -> None:
    logits = torch.randn(6, 50, generator=torch.Generator().manual_seed(3))
    rows = sampled_rows(6, temperature=1.0)
    for index in (0, 2, 5):
        rows[index].sampling = SamplingParams(temperature=0.0)
    tokens = picker().pick_all(logits, rows)
    assert [tokens[i] for i in (0, 2, 5)] == logits[[0, 2, 5]].argmax(dim=-1).tolist()


def test_a_seed_draws_the_same_tokens_again() -> None:
    logits = torch.randn(4, 50, generator=torch.Generator().manual_seed(5))
    first = picker().pick_all(logits, sampled_rows(4, top_p=0.9))
    again = picker().pick_all(logits, sampled_rows(4, top_p=0.9))
    assert first == again
    assert len(set(picker().pick_all(logits[:1].expand(64, -1), sampled_rows(64)))) > 1


def test_a_nucleus_wider_than_the_candidates_is_found_by_a_full_sort(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(rows_module, "NUCLEUS_CANDIDATES", 2)  # fewer than the nucleus holds
    assert_nucleus_and_whole_rows_drawn_apart()  # the plain rows keep tokens beyond the two
    narrow = sampled_rows(4000, top_p=0.5)  # the first token alone: within the candidates
    tokens = picker().pick_all(LOGITS.expand(len(narrow), -1), narrow)
    assert set(tokens) == {0}
