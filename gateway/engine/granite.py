"""Granite 4.0 Micro's forward pass as plain tensor functions over the loaded model's weights.

The static decoder (`gateway.engine.static`) runs the model through these functions instead of
the transformers modules: the same arithmetic (checked against them token for token on the
miniature), with the parts a CUDA graph needs made data instead of Python:

- the KV cache is preallocated (`StaticKV`: one slot of `context` positions per row); each row
  writes its new keys and values at its own position, and attends to the positions up to it;
- the uncertainty adapter is a per-row gate, `gate[row]` in {0, 1} times the LoRA delta, so base
  and adapter rows share one pass without a branch.

Nothing is copied from the model but the LoRA B matrices (times the LoRA scale, a few MB): the
functions read the model's own weights.
Supported: Granite 4.0 Micro's shape (every layer attention, no experts, rope, SwiGLU, RMSNorm);
`GraniteWeights.from_model` raises `Unsupported` for anything else (the eager decoder serves it).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

ADAPTER_NAME = "uncertainty"
CUDA_ATTENTION = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
"""The attention kernels these functions use on CUDA. Not cuDNN's, which torch puts first on
Hopper: it builds a plan for each new shape (every prompt length), and its fused attention has
had failures with masks and under graph capture. Prefill runs flash attention; the decoding
step's mask rules flash out, so it runs the memory-efficient kernel (math where that does not
apply), both accumulating in float32."""


class Unsupported(ValueError):
    """The model is not of the shape these functions implement."""


@dataclass(frozen=True)
class Projection:
    """A linear layer of the base model, with the adapter's LoRA delta when it has one.

    The delta is computed as PEFT computes it: in the LoRA weights' own dtype (PEFT keeps them
    in float32 under a bf16 model), added to the base output in that dtype, then cast back."""

    weight: torch.Tensor
    bias: torch.Tensor | None
    lora_a: torch.Tensor | None = None  # (rank, in)
    lora_b: torch.Tensor | None = None  # (out, rank), already times the LoRA scale

    def __call__(self, x: torch.Tensor, gate: torch.Tensor | None) -> torch.Tensor:
        y = F.linear(x, self.weight, self.bias)
        if gate is None or self.lora_a is None or self.lora_b is None:
            return y
        wide = self.lora_a.dtype
        delta = F.linear(F.linear(x.to(wide), self.lora_a), self.lora_b) * gate.to(wide)
        return (y.to(wide) + delta).to(y.dtype)

    @classmethod
    def of(cls, module: Any) -> Projection:
        base = getattr(module, "base_layer", module)
        if not isinstance(base, torch.nn.Linear):
            raise Unsupported(f"{type(base).__name__} is not a linear layer")
        if not hasattr(module, "lora_A") or ADAPTER_NAME not in module.lora_A:
            return cls(base.weight, base.bias)
        if getattr(module, "use_dora", {}).get(ADAPTER_NAME) or getattr(
            module, "lora_bias", {}
        ).get(ADAPTER_NAME):
            raise Unsupported("DoRA and LoRA biases are not supported")
        scale = float(module.scaling[ADAPTER_NAME])
        lora_a = module.lora_A[ADAPTER_NAME].weight.detach()
        lora_b = module.lora_B[ADAPTER_NAME].weight.detach() * scale
        return cls(base.weight, base.bias, lora_a, lora_b)


@dataclass(frozen=True)
class Layer:
    input_norm: torch.Tensor
    post_norm: torch.Tensor
    q: Projection
    k: Projection
    v: Projection
    o: Projection
    mlp_in: Projection
    mlp_out: Projection


@dataclass(frozen=True)
class GraniteWeights:
    """The tensors and constants of one Granite model (adapter included)."""

    embed: torch.Tensor
    layers: tuple[Layer, ...]
    norm: torch.Tensor
    lm_head: torch.Tensor
    inv_freq: torch.Tensor  # float32, (head_dim / 2,)
    rope_scale: float
    heads: int
    kv_heads: int
    head_dim: int
    eps: float
    embedding_multiplier: float
    residual_multiplier: float
    attention_multiplier: float
    logits_scaling: float

    @property
    def dtype(self) -> torch.dtype:
        return self.embed.dtype

    @property
    def device(self) -> torch.device:
        return self.embed.device

    @classmethod
    def from_model(cls, model: Any) -> GraniteWeights:
        """The weights of a `PeftModel` over `GraniteMoeHybridForCausalLM` (or the bare model)."""
        causal = model.get_base_model() if hasattr(model, "get_base_model") else model
        config = causal.config
        inner = getattr(causal, "model", None)
        if getattr(config, "model_type", None) != "granitemoehybrid" or inner is None:
            raise Unsupported(f"model type {getattr(config, 'model_type', None)!r}")
        if getattr(config, "num_local_experts", 0):
            raise Unsupported("mixture-of-experts layers")
        if getattr(config, "hidden_act", "silu") != "silu":
            raise Unsupported(f"activation {config.hidden_act!r}")
        rotary = getattr(inner, "rotary_emb", None)
        if rotary is None:
            raise Unsupported("no rotary position embedding")
        layers = []
        for layer in inner.layers:
            if getattr(layer, "mamba", None) is not None or layer.self_attn is None:
                raise Unsupported("Mamba layers")
            attn, mlp = layer.self_attn, layer.shared_mlp
            layers.append(
                Layer(
                    input_norm=layer.input_layernorm.weight,
                    post_norm=layer.post_attention_layernorm.weight,
                    q=Projection.of(attn.q_proj),
                    k=Projection.of(attn.k_proj),
                    v=Projection.of(attn.v_proj),
                    o=Projection.of(attn.o_proj),
                    mlp_in=Projection.of(mlp.input_linear),
                    mlp_out=Projection.of(mlp.output_linear),
                )
            )
        heads = int(config.num_attention_heads)
        return cls(
            embed=inner.embed_tokens.weight,
            layers=tuple(layers),
            norm=inner.norm.weight,
            lm_head=causal.lm_head.weight,
            # A non-persistent buffer: transformers' own rope moves it to the input's device
            # at each call; these functions need it where the weights are, once.
            inv_freq=rotary.inv_freq.to(inner.embed_tokens.weight.device, torch.float32),
            rope_scale=float(getattr(rotary, "attention_scaling", 1.0)),
            heads=heads,
            kv_heads=int(config.num_key_value_heads),
            head_dim=int(getattr(config, "head_dim", None) or config.hidden_size // heads),
            eps=float(config.rms_norm_eps),
            embedding_multiplier=float(config.embedding_multiplier),
            residual_multiplier=float(config.residual_multiplier),
            attention_multiplier=float(config.attention_multiplier),
            logits_scaling=float(config.logits_scaling),
        )


class StaticKV:
    """Keys and values of `slots` rows, `context` positions each, for every layer."""

    def __init__(self, weights: GraniteWeights, *, slots: int, context: int) -> None:
        shape = (slots, weights.kv_heads, context, weights.head_dim)
        dtype, device = weights.dtype, weights.device
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in weights.layers]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in weights.layers]
        self.slots = slots
        self.context = context

    @staticmethod
    def nbytes(weights: GraniteWeights, *, slots: int, context: int) -> int:
        itemsize = torch.empty((), dtype=weights.dtype).element_size()
        per_layer = slots * weights.kv_heads * context * weights.head_dim * itemsize
        return 2 * len(weights.layers) * per_layer

    def move(self, source: int, target: int, length: int) -> None:
        """Copy the first `length` positions of slot `source` into slot `target`."""
        for cache in (*self.keys, *self.values):
            cache[target, :, :length].copy_(cache[source, :, :length])


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    wide = x.float()
    wide = wide * torch.rsqrt(wide.pow(2).mean(-1, keepdim=True) + eps)
    return weight * wide.to(x.dtype)


def rope(w: GraniteWeights, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin for `positions` (any shape), with a trailing head_dim axis."""
    freqs = positions[..., None].float() * w.inv_freq
    emb = torch.cat((freqs, freqs), dim=-1)
    return (emb.cos() * w.rope_scale).to(w.dtype), (emb.sin() * w.rope_scale).to(w.dtype)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


def attention_kernels(device: torch.device) -> contextlib.AbstractContextManager[None]:
    """`CUDA_ATTENTION` on a CUDA device; elsewhere torch's own choice."""
    if device.type != "cuda":
        return contextlib.nullcontext()
    return sdpa_kernel(CUDA_ATTENTION)


def _mlp(layer: Layer, x: torch.Tensor, gate: torch.Tensor | None) -> torch.Tensor:
    first, second = layer.mlp_in(x, gate).chunk(2, dim=-1)
    return layer.mlp_out(F.silu(first) * second, gate)


def prefill(
    w: GraniteWeights,
    ids: torch.Tensor,
    gate: torch.Tensor | None,
    kv: StaticKV | None = None,
    slots: torch.Tensor | None = None,
) -> torch.Tensor:
    """The final hidden states (rows, tokens, hidden), after the final norm, of right-padded
    rows `ids` (rows, tokens) that start at position 0. With `kv`, each row's keys and values
    are written to its slot (`slots`, one per row) at positions 0..tokens-1; the padding's too,
    which later decoding steps overwrite before any row attends to them.
    `gate`: (rows, 1, 1), 1.0 where the adapter is on; None: off for all."""
    rows, tokens = ids.shape
    x = F.embedding(ids, w.embed) * w.embedding_multiplier
    positions = torch.arange(tokens, device=ids.device)
    cos, sin = rope(w, positions)  # (tokens, head_dim): broadcasts over rows and heads
    with attention_kernels(ids.device):
        for index, layer in enumerate(w.layers):
            h = rms_norm(x, layer.input_norm, w.eps)
            q = layer.q(h, gate).view(rows, tokens, w.heads, w.head_dim).transpose(1, 2)
            k = layer.k(h, gate).view(rows, tokens, w.kv_heads, w.head_dim).transpose(1, 2)
            v = layer.v(h, gate).view(rows, tokens, w.kv_heads, w.head_dim).transpose(1, 2)
            q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
            if kv is not None:
                assert slots is not None
                kv.keys[index][slots, :, :tokens] = k
                kv.values[index][slots, :, :tokens] = v
            attn = F.scaled_dot_product_attention(
                q, k, v, is_causal=True, scale=w.attention_multiplier, enable_gqa=True
            )
            attn = attn.transpose(1, 2).reshape(rows, tokens, w.heads * w.head_dim)
            x = x + layer.o(attn, gate) * w.residual_multiplier
            x = x + _mlp(layer, rms_norm(x, layer.post_norm, w.eps), gate) * w.residual_multiplier
    return rms_norm(x, w.norm, w.eps)


def logits(
    w: GraniteWeights, hidden: torch.Tensor, token_ids: torch.Tensor | None = None
) -> torch.Tensor:
    """float32 logits of final hidden states; only of `token_ids` when given (scaled in the
    model's dtype, as transformers does, then widened)."""
    head = w.lm_head if token_ids is None else w.lm_head[token_ids]
    return (F.linear(hidden, head) / w.logits_scaling).float()


def decode_step(
    w: GraniteWeights,
    ids: torch.Tensor,
    positions: torch.Tensor,
    gate: torch.Tensor,
    kv: StaticKV,
    context: int,
) -> torch.Tensor:
    """One token for each of the first `rows` slots: `ids` (rows,) at `positions` (rows,).

    Writes each row's keys and values at its position, attends to its positions 0..position
    among the first `context`, and returns float32 logits (rows, vocabulary). Every shape
    depends only on (rows, context): the step can be captured as a CUDA graph and replayed.
    """
    rows = ids.shape[0]
    group = w.heads // w.kv_heads
    x = F.embedding(ids, w.embed)[:, None, :] * w.embedding_multiplier  # (rows, 1, hidden)
    cos, sin = rope(w, positions[:, None])  # (rows, 1, head_dim)
    cos, sin = cos[:, None], sin[:, None]  # (rows, 1 head, 1 token, head_dim)
    slot = torch.arange(rows, device=ids.device)
    visible = torch.arange(context, device=ids.device)[None, :] <= positions[:, None]
    mask = visible[:, None, None, :]  # (rows, 1, 1, context)
    with attention_kernels(ids.device):
        for index, layer in enumerate(w.layers):
            h = rms_norm(x, layer.input_norm, w.eps)
            q = layer.q(h, gate).view(rows, 1, w.heads, w.head_dim).transpose(1, 2)
            k = layer.k(h, gate).view(rows, 1, w.kv_heads, w.head_dim).transpose(1, 2)
            v = layer.v(h, gate).view(rows, 1, w.kv_heads, w.head_dim).transpose(1, 2)
            q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
            keys, values = kv.keys[index], kv.values[index]
            keys[slot, :, positions] = k[:, :, 0]
            values[slot, :, positions] = v[:, :, 0]
            # The `group` query heads that share a key/value head are that head's query "tokens":
            # grouped-query attention for one token, without repeating keys and values.
            grouped = q.reshape(rows, w.kv_heads, group, w.head_dim)
            attn = F.scaled_dot_product_attention(
                grouped,
                keys[:rows, :, :context],
                values[:rows, :, :context],
                attn_mask=mask,
                scale=w.attention_multiplier,
            )
            attn = attn.reshape(rows, 1, w.heads * w.head_dim)
            x = x + layer.o(attn, gate) * w.residual_multiplier
            x = x + _mlp(layer, rms_norm(x, layer.post_norm, w.eps), gate) * w.residual_multiplier
    return logits(w, rms_norm(x[:, 0], w.norm, w.eps))
