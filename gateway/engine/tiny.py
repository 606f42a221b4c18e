"""Miniature Granite 4.0 Micro models, for tests and the offline demo.

`make_tiny_model(out_dir)` writes `out_dir/base/` (a `GraniteMoeHybridForCausalLM` with the real
module names at a tiny size, and a byte-level BPE tokenizer with the Granite role tokens and a
chat template that renders the Granite structure) and `out_dir/adapter/` (a PEFT LoRA on the real
adapter's six target modules). The adapter is also written under
`out_dir/adapter/uncertainty/granite-4.0-micro/lora/`, the layout of the real adapter repository,
so the `subfolder` loading path is exercised too.

The weights are random: the answers are noise. `teach=True` also trains the adapter so that its
greedy reply is `{"score": "N"}` (150 small steps: about a minute on one CPU core, more on a busy
machine; `progress=True` shows a progress bar on stderr); what it is taught, and how, is in
`gateway.engine.tiny_teach`.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import torch

from gateway.engine.tiny_teach import corpus, teach_answers, teach_format

ADAPTER_SUBFOLDER = "uncertainty/granite-4.0-micro/lora"
TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "input_linear", "output_linear"]
SPECIAL_TOKENS = ["<|end_of_text|>", "<|pad|>", "<|start_of_role|>", "<|end_of_role|>"]
TINY_LAYERS = 2
TINY_HIDDEN = 64
TINY_VOCAB = 1024


def build_tokenizer(seed: int = 0) -> Any:
    """A byte-level BPE tokenizer with the Granite role tokens; digits are single tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TINY_VOCAB,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus(seed), trainer=trainer)
    template = resources.files("gateway.engine").joinpath("chat_template.jinja").read_text()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<|end_of_text|>",
        eos_token="<|end_of_text|>",
        pad_token="<|pad|>",
        unk_token=None,
        additional_special_tokens=["<|start_of_role|>", "<|end_of_role|>"],
        padding_side="left",
        model_max_length=4096,
    )
    fast.chat_template = template
    return fast


def granite_config(
    tokenizer: Any,
    *,
    vocab_size: int,
    hidden_size: int,
    intermediate_size: int,
    layers: int,
    heads: int,
    kv_heads: int,
    logits_scaling: float = 10.0,
    max_positions: int = 131072,
) -> Any:
    """A `GraniteMoeHybridConfig` shaped like Granite 4.0 Micro (granite.md) at any size:
    every layer attention, rope, no experts, the real multipliers."""
    from transformers import GraniteMoeHybridConfig

    return GraniteMoeHybridConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        shared_intermediate_size=intermediate_size,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        layer_types=["full_attention"] * layers,
        num_local_experts=0,
        position_embedding_type="rope",
        rope_parameters={"rope_theta": 10_000_000.0, "rope_type": "default"},
        # Validated although no layer is a Mamba layer: d_head * n_heads == expand * hidden.
        mamba_n_heads=heads,
        mamba_d_head=2 * hidden_size // heads,
        mamba_expand=2,
        mamba_d_state=16,
        mamba_n_groups=1,
        embedding_multiplier=12.0,
        attention_multiplier=0.015625,
        residual_multiplier=0.22,
        logits_scaling=logits_scaling,
        rms_norm_eps=1e-5,
        max_position_embeddings=max_positions,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )


def build_base_model(tokenizer: Any, seed: int = 0, hidden_size: int = TINY_HIDDEN) -> Any:
    """The real Granite 4.0 Micro class at a tiny size: attention-only, rope, no experts."""
    from transformers import GraniteMoeHybridForCausalLM

    torch.manual_seed(seed)
    config = granite_config(
        tokenizer,
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=128,
        layers=TINY_LAYERS,
        heads=4,
        kv_heads=2,
        # The real model divides logits by 10; at width 64 that caps every logit near 1 and the
        # miniature could never be taught a sharp reply, so it divides by 1.
        logits_scaling=1.0,
        max_positions=4096,
    )
    model = GraniteMoeHybridForCausalLM(config)
    # Wide embedding rows (the head is tied to them) let training reach peaked distributions.
    torch.nn.init.normal_(model.model.embed_tokens.weight, std=0.5)
    model.eval()
    return model


def build_adapter(base: Any, seed: int = 0, rank: int = 8) -> Any:
    """A LoRA on the real adapter's six target modules, with non-zero random B so it matters."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed + 1)
    config = LoraConfig(
        r=rank,
        lora_alpha=2 * rank,
        target_modules=TARGET_MODULES,
        lora_dropout=0.0,
        bias="none",
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(base, config)
    for name, param in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.02)
    return model


def make_tiny_model(
    out_dir: Path, *, seed: int = 0, teach: bool = False, progress: bool = False
) -> Path:
    """Write `out_dir/base/` and `out_dir/adapter/` (and the adapter again under its subfolder).

    `progress`: progress bars on stderr while training."""
    out_dir = Path(out_dir)
    tokenizer = build_tokenizer(seed)
    base = build_base_model(tokenizer, seed)
    teach_answers(base, tokenizer, seed, progress=progress)
    base_dir = out_dir / "base"
    base.save_pretrained(base_dir)
    tokenizer.save_pretrained(base_dir)
    peft_model = build_adapter(base, seed)
    if teach:
        teach_format(peft_model, tokenizer, seed, progress=progress)
    adapter_dir = out_dir / "adapter"
    peft_model.save_pretrained(adapter_dir)
    peft_model.save_pretrained(adapter_dir / ADAPTER_SUBFOLDER)
    # The adapter config names the base it was made for; point it at the folder we wrote.
    for folder in (adapter_dir, adapter_dir / ADAPTER_SUBFOLDER):
        _set_base_path(folder / "adapter_config.json", str(base_dir))
    return out_dir


def _set_base_path(config_file: Path, base: str) -> None:
    import json

    config = json.loads(config_file.read_text())
    config["base_model_name_or_path"] = base
    config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
