"""A decoder-only transformer's weights and arithmetic, gathered from a transformers model.

Llama, Qwen2, Mistral and Gemma are one architecture with a few switches: biases on the q, k,
v (and o) projections, how RoPE's frequencies are scaled, the norm's arithmetic, a scale on
the embeddings, the MLP's activation and a sliding window. `DecoderWeights.of` reads those
switches off the model's own modules (the norm's class, the activation's, the rotary
embedding's type and scaling), so a configuration it has not been taught is refused with the
reason (`Unsupported`) rather than run inexactly, and `layers_forward` runs every layer with
the arithmetic of transformers' forward (the casts where it casts), leaving only attention to
the caller: `inference.engines.decoder.Decoder` attends over a KV cache,
`trainer.online.shared_prompt` over prompts shared by their responses.

The weights are the model's live parameters when gathered: each layer's q, k, v projections
(and its gate and up projections) stacked into one matrix so they cost one matmul, and a peft
LoRA adapter's update added in (W + scale·BA) in that copy, as
`inference.local.checkpoint_weights` does; the trained weights are left untouched.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["Attend", "DecoderWeights", "LayerWeights", "Unsupported"]

ARCHITECTURES = ("LlamaForCausalLM", "Qwen2ForCausalLM", "MistralForCausalLM",
                 "GemmaForCausalLM")
"""The transformers classes whose forward `DecoderWeights` reproduces (when their config's
switches are ones it knows)."""

STATIC_ROPE = ("default", "linear", "llama3", "yarn")
"""RoPE types whose frequencies are fixed when the model is built (the rotary module's
``inv_freq``, and yarn's ``attention_scaling`` on cos and sin). "dynamic" and "longrope"
change theirs with the sequence's length, which a cache of several lengths cannot follow."""

Attend = Callable[[int, Tensor, Tensor, Tensor], Tensor]
"""(layer index, queries (*, H, hd), keys (*, Hkv, hd), values (*, Hkv, hd)) → (*, H, hd)."""


class Unsupported(Exception):
    """The model's forward is not one `DecoderWeights` reproduces exactly; the message says
    why."""


@dataclass(frozen=True)
class LayerWeights:
    input_norm: Tensor  # (d,) the norm's scale (Gemma: 1 + w, in float32)
    qkv: Tensor  # ((H + 2·Hkv)·hd, d) the q, k and v projections, stacked
    qkv_bias: Tensor | None  # ((H + 2·Hkv)·hd,) Qwen2's (and a biased Llama's)
    out: Tensor  # (d, H·hd)
    out_bias: Tensor | None  # (d,)
    post_norm: Tensor  # (d,)
    gate_up: Tensor  # (2·I, d) the gate and up projections, stacked
    gate_up_bias: Tensor | None  # (2·I,)
    down: Tensor  # (d, I)
    down_bias: Tensor | None  # (d,)


@dataclass(frozen=True)
class DecoderWeights:
    embed: Tensor  # (V, d)
    embed_scale: Tensor | None
    """() Gemma's sqrt(d), in the weights' dtype (as its embedding casts it), else None."""
    padding_idx: int | None
    """The embedding's padding row, which gets no gradient (as in `nn.Embedding`)."""
    layers: list[LayerWeights]
    norm: Tensor  # (d,)
    head: Tensor  # (V, d)
    inv_freq: Tensor  # (hd/2,) RoPE's frequencies, scaled as the rope type says
    rope_scale: float
    """yarn's attention scaling, on cos and sin (1 for the other types)."""
    heads: int
    kv_heads: int
    head_dim: int
    eps: float
    scale_in_float: bool
    """Gemma's norm: (x̂·(1 + w)) in float32, then cast; Llama's: w·cast(x̂)."""
    activation: Callable[[Tensor], Tensor]
    """The MLP's, applied to the gate: silu, or Gemma's tanh-approximated gelu."""
    window: int | None
    """The sliding window, when the model has one (it covers the whole context)."""

    @classmethod
    def of(cls, model: Any, *, differentiable: bool = False) -> DecoderWeights:
        """``model``'s current weights (a transformers model, or a peft LoRA model over one);
        raises `Unsupported` for a model whose forward `layers_forward` would not reproduce.
        ``differentiable``: the gathered weights (stacked, an adapter's BA added in) keep
        their graph back to the parameters, for a forward that is trained through."""
        with torch.set_grad_enabled(differentiable):
            return _gather(_base_of(model))

    def embedding(self, ids: Tensor) -> Tensor:
        """(*, d) the embeddings of (*,) ids, scaled as the model scales them."""
        hidden = F.embedding(ids, self.embed, self.padding_idx)
        return hidden if self.embed_scale is None else hidden * self.embed_scale

    def layers_forward(self, hidden: Tensor, cos: Tensor, sin: Tensor, attend: Attend) -> Tensor:
        """(*, d) hidden states through every layer. cos, sin: (*, 1, hd) of each token's
        position (`rope_at`); ``attend`` runs one layer's attention (`Attend`)."""
        lead = hidden.shape[:-1]
        heads, kv, hd = self.heads, self.kv_heads, self.head_dim
        for index, layer in enumerate(self.layers):
            x = self.rms(hidden, layer.input_norm)
            qkv = F.linear(x, layer.qkv, layer.qkv_bias).view(*lead, heads + 2 * kv, hd)
            qk = qkv[..., :heads + kv, :]  # (*, H + Hkv, hd)
            qk = qk * cos + qk.roll(hd // 2, dims=-1) * sin  # RoPE, with sin's sign in it
            attended = attend(index, qk[..., :heads, :], qk[..., heads:, :],
                              qkv[..., heads + kv:, :])  # (*, H, hd)
            hidden = hidden + F.linear(attended.reshape(*lead, heads * hd), layer.out,
                                       layer.out_bias)
            gate, up = F.linear(self.rms(hidden, layer.post_norm), layer.gate_up,
                                layer.gate_up_bias).chunk(2, dim=-1)  # each (*, I)
            hidden = hidden + F.linear(self.activation(gate) * up, layer.down, layer.down_bias)
        return hidden

    def rms(self, hidden: Tensor, scale: Tensor) -> Tensor:
        """The model's RMSNorm: normalised in float32, then Llama's cast-then-scale or
        Gemma's scale-then-cast."""
        normed = F.rms_norm(hidden.float(), (hidden.shape[-1],), eps=self.eps)
        if self.scale_in_float:
            return (normed * scale).to(hidden.dtype)
        return scale * normed.to(hidden.dtype)

    def logits(self, last: Tensor) -> Tensor:
        """(*, V) float32 logits of (*, d) last hidden states."""
        return F.linear(self.rms(last, self.norm), self.head).float()

    def rope_at(self, positions: Tensor) -> tuple[Tensor, Tensor]:
        """cos and signed sin (each positions.shape + (hd,)) of ``positions``."""
        count = int(positions.max()) + 1 if positions.numel() else 1
        cos, sin = self.rope_tables(count, positions.device)
        return F.embedding(positions, cos), F.embedding(positions, sin)

    def rope_tables(self, count: int, device: torch.device) -> tuple[Tensor, Tensor]:
        """(count, hd) cos and signed sin of positions 0..count-1, in the rotary module's
        arithmetic (float32, times the attention scaling, then the weights' dtype). The sign
        is `rotate_half`'s: with x = (x₁, x₂), rotate_half(x)·sin = (x₂, x₁)·(−sin₁, sin₂), a
        roll of x by hd/2."""
        positions = torch.arange(count, device=device).float()
        freqs = positions[:, None] * self.inv_freq.to(device).float()  # (P, hd/2)
        angles = torch.cat([freqs, freqs], dim=-1)  # (P, hd)
        sign = torch.ones(self.head_dim, device=device)
        sign[:self.head_dim // 2] = -1.0
        cos, sin = angles.cos() * self.rope_scale, angles.sin() * self.rope_scale
        return cos.to(self.embed.dtype), (sin * sign).to(self.embed.dtype)


def _gather(base: Any) -> DecoderWeights:
    if type(base).__name__ not in ARCHITECTURES or not type(base).__module__.startswith(
            "transformers."):
        raise Unsupported(f"{type(base).__name__} is not one of the architectures the batch "
                          f"decoder reproduces ({', '.join(ARCHITECTURES)})")
    config, inner = base.config, base.model
    rotary = inner.rotary_emb
    eps, scale_in_float = _norm_kind(inner.norm)
    embed, embed_scale, padding_idx = _embedding(inner.embed_tokens)
    return DecoderWeights(
        embed=embed, embed_scale=embed_scale, padding_idx=padding_idx,
        layers=[_layer(layer, eps, scale_in_float) for layer in inner.layers],
        norm=_norm_scale(inner.norm, eps, scale_in_float), head=_linear(base.lm_head, False)[0],
        inv_freq=rotary.inv_freq, rope_scale=_rope_scale(rotary),
        heads=config.num_attention_heads,
        kv_heads=config.num_key_value_heads or config.num_attention_heads,
        head_dim=inner.layers[0].self_attn.head_dim, eps=eps, scale_in_float=scale_in_float,
        activation=_activation(inner.layers), window=_window(inner.layers, config))


def _layer(layer: Any, eps: float, scale_in_float: bool) -> LayerWeights:
    attention, mlp = layer.self_attn, layer.mlp
    if attention.scaling != attention.head_dim ** -0.5:
        raise Unsupported("attention scaling other than head_dim^-0.5")
    if not getattr(attention, "is_causal", True):
        raise Unsupported("bidirectional attention")
    projections = [_linear(attention.q_proj), _linear(attention.k_proj),
                   _linear(attention.v_proj)]
    out, out_bias = _linear(attention.o_proj)
    gate_up = [_linear(mlp.gate_proj), _linear(mlp.up_proj)]
    down, down_bias = _linear(mlp.down_proj)
    return LayerWeights(
        input_norm=_norm_scale(layer.input_layernorm, eps, scale_in_float),
        qkv=torch.cat([w for w, _ in projections]), qkv_bias=_stacked_bias(projections),
        out=out, out_bias=out_bias,
        post_norm=_norm_scale(layer.post_attention_layernorm, eps, scale_in_float),
        gate_up=torch.cat([w for w, _ in gate_up]), gate_up_bias=_stacked_bias(gate_up),
        down=down, down_bias=down_bias)


def _stacked_bias(linears: list[tuple[Tensor, Tensor | None]]) -> Tensor | None:
    """The biases of stacked projections, stacked (zeros for one without); None if none has
    one."""
    if all(bias is None for _, bias in linears):
        return None
    return torch.cat([bias if bias is not None else weight.new_zeros(weight.shape[0])
                      for weight, bias in linears])


def _rope_scale(rotary: Any) -> float:
    rope_type = getattr(rotary, "rope_type", None)
    if rope_type in ("dynamic", "longrope"):
        raise Unsupported(f"rope type {rope_type!r}: its frequencies change with the "
                          "sequence's length")
    if rope_type not in STATIC_ROPE:
        raise Unsupported(f"rope type {rope_type!r} (reproduced: {', '.join(STATIC_ROPE)})")
    return float(rotary.attention_scaling)


def _window(layers: Any, config: Any) -> int | None:
    """The narrowest sliding window of any layer (Qwen2 names it per layer, Mistral in its
    config); refused unless it covers the whole context, where it changes nothing."""
    windows = [getattr(layer.self_attn, "sliding_window", getattr(config, "sliding_window",
                                                                  None)) for layer in layers]
    window = min((w for w in windows if w is not None), default=None)
    context = int(getattr(config, "max_position_embeddings", 0) or 0)
    if window is not None and window < context:
        raise Unsupported(f"sliding-window attention over {window} tokens, shorter than the "
                          f"context ({context}): only a window covering it is reproduced")
    return window


def _activation(layers: Any) -> Callable[[Tensor], Tensor]:
    from transformers.activations import GELUActivation, GELUTanh, SiLUActivation

    kinds = {type(layer.mlp.act_fn) for layer in layers}
    if len(kinds) != 1:
        raise Unsupported(f"layers with different activations ({sorted(k.__name__ for k in kinds)})")
    act = layers[0].mlp.act_fn
    if type(act) in (SiLUActivation, nn.SiLU):
        return F.silu
    if type(act) in (GELUTanh, GELUActivation):
        return act.act  # type: ignore[no-any-return]  # F.gelu (tanh or erf) or its python twin
    raise Unsupported(f"activation {type(act).__name__} (reproduced: silu, gelu, gelu tanh)")


def _norm_kind(module: Any) -> tuple[float, bool]:
    """(eps, scale_in_float) of the model's RMSNorm class."""
    from transformers.models.gemma.modeling_gemma import GemmaRMSNorm
    from transformers.models.llama.modeling_llama import LlamaRMSNorm
    from transformers.models.mistral.modeling_mistral import MistralRMSNorm
    from transformers.models.qwen2.modeling_qwen2 import Qwen2RMSNorm

    if type(module) in (LlamaRMSNorm, Qwen2RMSNorm, MistralRMSNorm):
        return float(module.variance_epsilon), False
    if type(module) is GemmaRMSNorm:
        return float(module.eps), True
    raise Unsupported(f"a {type(module).__name__} norm (reproduced: Llama's, Qwen2's, "
                      "Mistral's and Gemma's RMSNorm)")


def _norm_scale(module: Any, eps: float, scale_in_float: bool) -> Tensor:
    """(d,) what the norm multiplies the normalised states by: w, or Gemma's 1 + w in
    float32."""
    if _norm_kind(module) != (eps, scale_in_float):
        raise Unsupported(f"norms of different kinds or eps ({type(module).__name__})")
    weight: Tensor = module.weight
    return 1.0 + weight.float() if scale_in_float else weight


def _embedding(module: nn.Module) -> tuple[Tensor, Tensor | None, int | None]:
    """(V, d) the weight the token embedding looks up (a LoRA adapter's update added in), its
    scale (Gemma's) and its padding row."""
    base = _unwrapped(module)
    if not isinstance(base, nn.Embedding) or base.max_norm is not None or (
            base.scale_grad_by_freq or base.sparse):
        raise Unsupported(f"a {type(base).__name__} token embedding")
    scale = getattr(base, "embed_scale", None)
    if type(base) is not nn.Embedding and scale is None:
        raise Unsupported(f"a {type(base).__name__} token embedding")
    return (_weight(module), None if scale is None else scale.to(base.weight.dtype),
            base.padding_idx)


def _linear(module: nn.Module, bias_allowed: bool = True) -> tuple[Tensor, Tensor | None]:
    """(weight, bias) a projection applies: a plain `nn.Linear`'s, or a peft LoRA layer's,
    whose bias is its base layer's."""
    base = _unwrapped(module)
    if type(base) is not nn.Linear or (base.bias is not None and not bias_allowed):
        raise Unsupported(f"a {type(base).__name__} where a Linear was expected")
    return _weight(module), base.bias


def _lora_types() -> tuple[type, ...]:
    try:
        from peft.tuners.lora import Embedding as LoraEmbedding
        from peft.tuners.lora import Linear as LoraLinear
    except ImportError:  # pragma: no cover - peft is a dependency of the trainer
        return ()
    return LoraLinear, LoraEmbedding


def _unwrapped(module: nn.Module) -> nn.Module:
    """The layer under a peft LoRA layer; ``module`` itself otherwise (another wrapper, such
    as peft's modules_to_save, is then refused by its type)."""
    return module.get_base_layer() if type(module) in _lora_types() else module  # type: ignore


def _weight(module: nn.Module) -> Tensor:
    """The weight a plain `nn.Linear` or `nn.Embedding` uses in its forward, or a peft LoRA
    layer's: the base weight plus each active adapter's scale·BA."""
    if type(module) not in _lora_types():
        return module.weight  # type: ignore[return-value]
    from peft.tuners.lora import Linear as LoraLinear

    weight = _weight(module.get_base_layer())  # type: ignore[operator]
    if module.disable_adapters or module.merged:  # type: ignore[union-attr]
        return weight  # the base weight, which a merged adapter is already in
    adapters = module.lora_A if type(module) is LoraLinear else module.lora_embedding_A
    for adapter in module.active_adapters:  # type: ignore[union-attr]
        if adapter not in adapters:  # type: ignore[operator]
            continue
        if adapter in module.lora_variant or module.lora_bias.get(adapter):  # type: ignore
            raise Unsupported(f"LoRA adapter {adapter!r} is a variant (e.g. DoRA) or has a "
                              "bias")
        weight = weight + module.get_delta_weight(adapter)  # type: ignore[operator]
    return weight


def _base_of(model: Any) -> Any:
    """The transformers model under a peft model; ``model`` itself otherwise."""
    try:
        from peft import PeftModel, PeftType
    except ImportError:  # pragma: no cover
        return model
    if not isinstance(model, PeftModel):
        return model
    kinds = {config.peft_type for config in model.peft_config.values()}
    if kinds != {PeftType.LORA}:
        raise Unsupported(f"peft adapters of type {sorted(map(str, kinds))} (only LoRA)")
    return model.get_base_model()
