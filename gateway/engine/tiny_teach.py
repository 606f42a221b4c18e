"""What the miniature models are taught: their words, example answers, certainty replies.

`corpus` is the text the tokenizer is trained on; `teach_answers` trains the tiny base so its
answers are short sentences that end the turn; `teach_format` trains the LoRA so the adapter's
greedy reply is `{"score": "N"}`. Both are a few next-token steps on the replies only.
"""

from __future__ import annotations

import random
from typing import Any

import torch

from gateway.certainty import CERTAINTY_TURN, certainty_messages

WORDS = [
    "the",
    "a",
    "an",
    "of",
    "to",
    "in",
    "is",
    "was",
    "what",
    "who",
    "when",
    "where",
    "why",
    "how",
    "which",
    "capital",
    "city",
    "river",
    "mountain",
    "country",
    "number",
    "year",
    "people",
    "water",
    "light",
    "sound",
    "energy",
    "planet",
    "star",
    "moon",
    "sun",
    "earth",
    "paris",
    "france",
    "london",
    "rome",
    "berlin",
    "madrid",
    "tokyo",
    "model",
    "answer",
    "question",
    "document",
    "score",
    "certain",
    "sure",
    "maybe",
    "yes",
    "no",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "hundred",
    "thousand",
    "first",
    "last",
    "big",
    "small",
    "red",
    "blue",
    "green",
    "old",
    "new",
    "good",
    "bad",
    "fast",
    "slow",
    "hot",
    "cold",
    "north",
    "south",
    "east",
    "west",
    "about",
    "because",
    "please",
    "tell",
    "me",
    "explain",
    "why",
    "does",
    "do",
    "can",
    "could",
    "would",
    "should",
    "name",
    "list",
    "give",
    "short",
    "long",
    "science",
    "history",
    "music",
    "art",
    "math",
    "physics",
    "chemistry",
    "biology",
    "computer",
    "language",
    "word",
    "sentence",
    "helpful",
    "assistant",
    "professional",
    "accurate",
    "safe",
    "system",
    "user",
    "documents",
    "facts",
    "provided",
    "available",
]


def corpus(seed: int = 0, lines: int = 400) -> list[str]:
    """A small English-like corpus covering chat structure, JSON replies and digits."""
    rng = random.Random(seed)
    text = []
    for _ in range(lines):
        words = rng.choices(WORDS, k=rng.randint(4, 14))
        text.append(" ".join(words).capitalize() + rng.choice([".", "?", "!"]))
    for digit in range(10):
        text.append(f'{{"score": "{digit}"}}')
    text.append("0123456789 ,;:'\"{}[]()<>/\\|-_=+*&^%$#@!~`")
    return text


def _random_sentence(rng: random.Random, low: int, high: int, end: str) -> str:
    return " ".join(rng.choices(WORDS, k=rng.randint(low, high))).capitalize() + end


def _answer_examples(tokenizer: Any, seed: int, count: int) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, reply ids) pairs: a question and a short sentence that ends the turn."""
    rng = random.Random(seed)
    examples = []
    for _ in range(count):
        messages = [{"role": "user", "content": _random_sentence(rng, 3, 9, "?")}]
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        prompt = tokenizer.encode(text, add_special_tokens=False)
        reply = tokenizer.encode(_random_sentence(rng, 3, 12, "."), add_special_tokens=False)
        examples.append((prompt, [*reply, tokenizer.eos_token_id]))
    return examples


def _format_examples(tokenizer: Any, seed: int, count: int) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, reply ids) pairs: certainty prompts and the reply `{"score": "N"}`."""
    rng = random.Random(seed + 7)
    examples = []
    for _ in range(count):
        question = _random_sentence(rng, 3, 9, "?")
        answer = _random_sentence(rng, 2, 12, ".")
        messages = certainty_messages([{"role": "user", "content": question}], answer)
        assert messages[-1]["content"] == CERTAINTY_TURN
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        prompt = tokenizer.encode(text, add_special_tokens=False)
        # The digits are random labels: the miniature learns the reply's format and how often
        # each digit comes, nothing about correctness (its answers are noise anyway).
        reply = f'{{"score": "{rng.randrange(10)}"}}'
        examples.append(
            (prompt, [*tokenizer.encode(reply, add_special_tokens=False), tokenizer.eos_token_id])
        )
    return examples


def _train(
    model: Any,
    examples: list[tuple[list[int], list[int]]],
    params: list[torch.nn.Parameter],
    *,
    pad_id: int,
    steps: int,
    lr: float,
    batch: int = 16,
    progress: str | None = None,
) -> float:
    """A few steps of next-token training on the replies only; returns the last loss.

    `progress`: a label for a progress bar on stderr (none when unset)."""
    from tqdm import tqdm

    optimizer = torch.optim.AdamW(params, lr=lr)
    model.train()
    loss_value = float("nan")
    for step in tqdm(range(steps), desc=progress, disable=progress is None, unit="step"):
        chunk = [examples[(step * batch + k) % len(examples)] for k in range(batch)]
        width = max(len(p) + len(r) for p, r in chunk)
        ids = torch.full((batch, width), pad_id, dtype=torch.long)
        labels = torch.full((batch, width), -100, dtype=torch.long)
        mask = torch.zeros((batch, width), dtype=torch.long)
        for i, (prompt, reply) in enumerate(chunk):
            row = prompt + reply
            ids[i, width - len(row) :] = torch.tensor(row)
            mask[i, width - len(row) :] = 1
            labels[i, width - len(reply) :] = torch.tensor(reply)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        out = model(input_ids=ids, attention_mask=mask, position_ids=positions, labels=labels)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        loss_value = float(out.loss.item())
    model.eval()
    return loss_value


def teach_answers(
    model: Any,
    tokenizer: Any,
    seed: int = 0,
    steps: int = 150,
    lr: float = 1e-2,
    *,
    progress: bool = False,
) -> float:
    """Train the tiny base briefly so its answers are short word sequences that end the turn."""
    torch.manual_seed(seed + 3)
    examples = _answer_examples(tokenizer, seed, 256)
    params = [p for p in model.parameters() if p.requires_grad]
    label = "teaching the base to answer" if progress else None
    return _train(
        model, examples, params, pad_id=tokenizer.pad_token_id, steps=steps, lr=lr, progress=label
    )


def teach_format(
    model: Any, tokenizer: Any, seed: int = 0, steps: int = 150, *, progress: bool = False
) -> float:
    """Train the LoRA briefly so the adapter's greedy reply is `{"score": "N"}`; returns loss."""
    torch.manual_seed(seed + 2)
    examples = _format_examples(tokenizer, seed, 256)
    params = [p for n, p in model.named_parameters() if "lora_" in n]
    label = "teaching the adapter its reply format" if progress else None
    return _train(
        model, examples, params, pad_id=tokenizer.pad_token_id, steps=steps, lr=1e-2, progress=label
    )
