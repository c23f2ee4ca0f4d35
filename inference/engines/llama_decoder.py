"""A lean batched decoder for transformers' `LlamaForCausalLM`, over the model's live weights.

On a small model on CPU, `LlamaForCausalLM.forward` spends almost all of a decode step in
module and Python overhead (about 3 ms for 32 rows of the demo model, of which the output
matmul is 0.04 ms). `LlamaDecoder` does the same math, RMSNorm → RoPE → grouped-query
attention → SwiGLU, in a few torch ops per layer, over a KV cache allocated once per batch.

The weights are gathered from the model's parameters when a decoder is built (once per
generation call, `LlamaDecoder.of`), so an optimizer step is seen by the next call. Each layer's
q, k, v projections (and its gate and up projections) are stacked into one matrix so they cost
one matmul. A peft LoRA policy's adapters are added in (W + scale·BA) in that gathered copy,
as `inference.local.checkpoint_weights` does: the trained weights are left untouched.

Only configurations it reproduces exactly are taken (`unsupported_reason`); callers fall back
to the torch engine for the others. The math is the model's in eval mode (no dropout).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["LlamaDecoder", "Unsupported", "supports", "unsupported_reason"]


class Unsupported(Exception):
    """The model's forward is not one `LlamaDecoder` reproduces exactly; the message says why."""


def unsupported_reason(model: Any) -> str | None:
    """Why ``model`` (a transformers model, or a peft model over one) is not one this decoder
    reproduces exactly, or None when it is."""
    try:
        LlamaDecoder.of(model)
    except Unsupported as refusal:
        return str(refusal)
    return None


def supports(model: Any) -> bool:
    return unsupported_reason(model) is None


@dataclass(frozen=True)
class _Layer:
    input_norm: Tensor  # (d,)
    qkv: Tensor  # ((H + 2·Hkv)·hd, d) the q, k and v projections, stacked
    out: Tensor  # (d, H·hd)
    post_norm: Tensor  # (d,)
    gate_up: Tensor  # (2·I, d) the gate and up projections, stacked
    down: Tensor  # (d, I)


@dataclass
class _Cache:
    keys: list[Tensor]
    """Per layer, (B, Hkv, S, hd) the keys of every column written so far (RoPE applied)."""
    values: list[Tensor]
    """Per layer, (B, Hkv, S, hd)."""
    visible: Tensor
    """(B, S) bool: the column holds a real token (not left padding, not yet unwritten)."""
    positions: Tensor
    """(B,) the position of each row's next token (its real tokens so far)."""
    length: int = 0
    """Columns written."""


class LlamaDecoder:
    """Prefill then one-token steps for a batch of left-padded rows (float logits out)."""

    def __init__(self, embed: Tensor, layers: list[_Layer], norm: Tensor, head: Tensor,
                 inv_freq: Tensor, heads: int, kv_heads: int, head_dim: int, eps: float):
        self.embed, self.layers, self.norm, self.head = embed, layers, norm, head
        self.inv_freq = inv_freq  # (hd/2,)
        self.heads, self.kv_heads, self.head_dim, self.eps = heads, kv_heads, head_dim, eps
        self.cache: _Cache | None = None
        self._cos = self._sin = embed.new_zeros((0, head_dim))
        """(P, hd) cos and signed sin of positions 0..P-1 (`_rope_tables`)."""

    @classmethod
    def of(cls, model: Any, *, differentiable: bool = False) -> LlamaDecoder:
        """A decoder over ``model``'s current weights (a transformers model, or a peft LoRA
        model over one); raises `Unsupported` for a model whose forward it would not
        reproduce. ``differentiable``: the gathered weights (stacked, an adapter's BA added
        in) keep their graph back to the parameters, for a forward that is trained through
        (`trainer.online.shared_prompt`)."""
        with torch.set_grad_enabled(differentiable):
            return cls._gather(model)

    @classmethod
    def _gather(cls, model: Any) -> LlamaDecoder:
        from transformers import LlamaForCausalLM

        base = _llama_of(model)
        if type(base) is not LlamaForCausalLM:
            raise Unsupported(f"{type(base).__name__} is not a LlamaForCausalLM")
        config = base.config
        rotary = base.model.rotary_emb
        if rotary.rope_type != "default" or rotary.attention_scaling != 1.0:
            raise Unsupported(f"rope type {rotary.rope_type!r} (only the default rope is "
                              "reproduced)")
        if config.hidden_act != "silu":
            raise Unsupported(f"activation {config.hidden_act!r} (only silu)")
        if getattr(config, "sliding_window", None) is not None:
            raise Unsupported("sliding-window attention")
        layers = []
        for layer in base.model.layers:
            attention, mlp = layer.self_attn, layer.mlp
            if attention.scaling != attention.head_dim ** -0.5:
                raise Unsupported("attention scaling other than head_dim^-0.5")
            layers.append(_Layer(
                input_norm=_norm_weight(layer.input_layernorm, config.rms_norm_eps),
                qkv=torch.cat([_weight(attention.q_proj), _weight(attention.k_proj),
                               _weight(attention.v_proj)]),
                out=_weight(attention.o_proj),
                post_norm=_norm_weight(layer.post_attention_layernorm, config.rms_norm_eps),
                gate_up=torch.cat([_weight(mlp.gate_proj), _weight(mlp.up_proj)]),
                down=_weight(mlp.down_proj)))
        return cls(embed=_weight(base.model.embed_tokens), layers=layers,
                   norm=_norm_weight(base.model.norm, config.rms_norm_eps),
                   head=_weight(base.lm_head), inv_freq=base.model.rotary_emb.inv_freq,
                   heads=config.num_attention_heads,
                   kv_heads=config.num_key_value_heads or config.num_attention_heads,
                   head_dim=base.model.layers[0].self_attn.head_dim, eps=config.rms_norm_eps)

    def prefill(self, input_ids: Tensor, mask: Tensor, capacity: int) -> Tensor:
        """Run left-padded prompts, (B, L) ids and (B, L) mask (1 real, 0 padding), into a
        fresh cache of ``capacity`` columns; returns (B, V) float32 logits of each row's next
        token."""
        rows, length = input_ids.shape
        device = input_ids.device
        real = mask.bool()
        positions = (mask.cumsum(-1) - 1).clamp(min=0)  # (B, L)
        shape = (rows, self.kv_heads, capacity, self.head_dim)
        self.cache = _Cache(
            keys=[self.embed.new_zeros(shape) for _ in self.layers],
            values=[self.embed.new_zeros(shape) for _ in self.layers],
            visible=torch.zeros((rows, capacity), dtype=torch.bool, device=device),
            positions=mask.sum(-1))
        self.cache.visible[:, :length] = real
        if self._cos.shape[0] < capacity:
            self._cos, self._sin = self._rope_tables(capacity, device)
        causal = torch.ones((length, length), dtype=torch.bool, device=device).tril()
        # A padding query sees itself too, so no row of the mask is empty (an empty row's
        # softmax is NaN, which would reach real rows through the next layer's values).
        attend = (causal & real[:, None, :]) | torch.eye(length, dtype=torch.bool,
                                                         device=device)  # (B, L, L)
        hidden = self._forward(input_ids, positions, attend.unsqueeze(1), 0)  # (B, L, d)
        return self.logits(hidden[:, -1])

    def step(self, tokens: Tensor) -> Tensor:
        """Append (B,) ``tokens``, one per row; returns (B, V) float32 next-token logits."""
        cache = self.cache
        assert cache is not None, "prefill first"
        column = cache.length
        cache.visible[:, column] = True
        attend = cache.visible[:, None, None, :column + 1]  # (B, 1, 1, S')
        hidden = self._forward(tokens[:, None], cache.positions[:, None], attend, column)
        cache.positions = cache.positions + 1
        return self.logits(hidden[:, -1])

    def keep(self, rows: Tensor) -> None:
        """The cache rows ``rows`` (a (B',) index; a row may repeat) from now on, in order."""
        cache = self.cache
        assert cache is not None
        cache.keys = [k.index_select(0, rows) for k in cache.keys]
        cache.values = [v.index_select(0, rows) for v in cache.values]
        cache.visible = cache.visible.index_select(0, rows)
        cache.positions = cache.positions.index_select(0, rows)

    def _forward(self, input_ids: Tensor, positions: Tensor, attend: Tensor,
                 column: int) -> Tensor:
        """(B, T) ids at (B, T) positions, written to cache columns [column, column + T);
        attend: (B, 1, T, column + T) bool. Returns (B, T, d) final hidden states."""
        cache = self.cache
        assert cache is not None
        rows, width = input_ids.shape
        hidden = F.embedding(input_ids, self.embed)  # (B, T, d)
        cos = F.embedding(positions, self._cos).unsqueeze(1)  # (B, 1, T, hd)
        sin = F.embedding(positions, self._sin).unsqueeze(1)  # (B, 1, T, hd)
        heads, kv, hd = self.heads, self.kv_heads, self.head_dim
        end = column + width
        for index, layer in enumerate(self.layers):
            x = self.rms(hidden, layer.input_norm)
            qkv = F.linear(x, layer.qkv).view(rows, width, heads + 2 * kv, hd).transpose(1, 2)
            qk = qkv[:, :heads + kv]  # (B, H + Hkv, T, hd)
            qk = qk * cos + qk.roll(hd // 2, dims=-1) * sin  # RoPE, with sin's sign in it
            keys, values = cache.keys[index], cache.values[index]
            keys[:, :, column:end] = qk[:, heads:]
            values[:, :, column:end] = qkv[:, heads + kv:]
            attended = F.scaled_dot_product_attention(
                qk[:, :heads], keys[:, :, :end], values[:, :, :end], attn_mask=attend,
                enable_gqa=heads != kv)  # (B, H, T, hd)
            hidden = hidden + F.linear(attended.transpose(1, 2).reshape(rows, width, heads * hd),
                                       layer.out)
            gate, up = F.linear(self.rms(hidden, layer.post_norm),
                                layer.gate_up).chunk(2, dim=-1)  # each (B, T, I)
            hidden = hidden + F.linear(F.silu(gate) * up, layer.down)
        cache.length = end
        return hidden

    def rope_at(self, positions: Tensor) -> tuple[Tensor, Tensor]:
        """cos and signed sin (each positions.shape + (hd,)) of ``positions``, as the layers
        apply them: x·cos + roll(x, hd/2)·sin."""
        count = int(positions.max()) + 1 if positions.numel() else 1
        if self._cos.shape[0] < count:
            self._cos, self._sin = self._rope_tables(count, positions.device)
        return F.embedding(positions, self._cos), F.embedding(positions, self._sin)

    def _rope_tables(self, count: int, device: torch.device) -> tuple[Tensor, Tensor]:
        """(count, hd) cos and signed sin of positions 0..count-1, in `LlamaRotaryEmbedding`'s
        arithmetic (float32, then the weights' dtype). The sign is `rotate_half`'s: with
        x = (x₁, x₂), rotate_half(x)·sin = (x₂, x₁)·(−sin₁, sin₂), a roll of x by hd/2."""
        positions = torch.arange(count, device=device).float()
        freqs = positions[:, None] * self.inv_freq.float()  # (P, hd/2)
        angles = torch.cat([freqs, freqs], dim=-1)  # (P, hd)
        half = self.head_dim // 2
        sign = torch.ones(self.head_dim, device=device)
        sign[:half] = -1.0
        return angles.cos().to(self.embed.dtype), (angles.sin() * sign).to(self.embed.dtype)

    def rms(self, hidden: Tensor, weight: Tensor) -> Tensor:
        """`LlamaRMSNorm`: normalised in float32, cast back, then scaled."""
        normed = F.rms_norm(hidden.float(), (hidden.shape[-1],), eps=self.eps)
        return weight * normed.to(hidden.dtype)

    def logits(self, last: Tensor) -> Tensor:
        """(B, V) float32 logits of (B, d) last hidden states."""
        return F.linear(self.rms(last, self.norm), self.head).float()


def _llama_of(model: Any) -> Any:
    """The transformers model under a peft model; ``model`` itself otherwise."""
    try:
        from peft import PeftModel, PeftType
    except ImportError:  # pragma: no cover - peft is a dependency of the trainer
        return model
    if not isinstance(model, PeftModel):
        return model
    kinds = {config.peft_type for config in model.peft_config.values()}
    if kinds != {PeftType.LORA}:
        raise Unsupported(f"peft adapters of type {sorted(map(str, kinds))} (only LoRA)")
    return model.get_base_model()


def _norm_weight(module: nn.Module, eps: float) -> Tensor:
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    if type(module) is not LlamaRMSNorm or module.variance_epsilon != eps:
        raise Unsupported(f"a {type(module).__name__} norm where LlamaRMSNorm was expected")
    return module.weight


def _weight(module: nn.Module) -> Tensor:
    """The weight a plain `nn.Linear` (no bias) or `nn.Embedding` would use in its forward,
    or a peft LoRA layer's: the base weight plus each active adapter's scale·BA."""
    try:
        from peft.tuners.lora import Embedding as LoraEmbedding
        from peft.tuners.lora import Linear as LoraLinear
    except ImportError:  # pragma: no cover
        LoraEmbedding = LoraLinear = ()  # type: ignore[assignment,misc]
    if type(module) in (LoraLinear, LoraEmbedding):
        weight = _weight(module.get_base_layer())  # type: ignore[operator]
        if module.disable_adapters or module.merged:  # type: ignore[union-attr]
            return weight  # the base weight, which a merged adapter is already in
        adapters = module.lora_A if type(module) is LoraLinear else module.lora_embedding_A
        for adapter in module.active_adapters:  # type: ignore[union-attr]
            if adapter not in adapters:  # type: ignore[operator]
                continue
            if adapter in module.lora_variant or module.lora_bias.get(adapter):  # type: ignore
                raise Unsupported(f"LoRA adapter {adapter!r} is a variant (e.g. DoRA) or has "
                                   "a bias")
            weight = weight + module.get_delta_weight(adapter)  # type: ignore[operator]
        return weight
    if type(module) is nn.Linear and module.bias is None:
        return module.weight
    if type(module) is nn.Embedding and module.max_norm is None:
        return module.weight
    raise Unsupported(f"a {type(module).__name__} where a bias-free Linear or an Embedding "
                       "was expected")
