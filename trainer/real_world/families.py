"""The real families as tiny checkpoints: each one's tokenizer conventions, chat template,
stop tokens and architecture, at a size a CPU trains in seconds.

Every family has head_dim 64 (the smallest vLLM's CPU attention takes) and a BPE vocabulary
of a few thousand ids (`SIZES`). What differs is what breaks code written for one family:
Qwen2's biased q/k/v projections, a model vocabulary padded past the tokenizer's and no bos;
Llama 3's `llama3` RoPE scaling, three stop ids and no pad token; Mistral's sliding window
and `[INST]` template; Gemma's scaled embeddings, (1 + w) norms, GELU, bf16 weights and no
system role; GPT-2's learned positions, a short context and no chat template at all.

Every family's embeddings are untied, as Qwen2's, Llama 3's and Mistral's 7B and 8B models
have them (Gemma and GPT-2 tie theirs, and so do the small Qwen2 and Llama 3 models): at this
size a tied model learns the demo task far slower (after the same 2,500 pretraining steps, a
tied Gemma got 3.5% held-out exact match from a supervised run, an untied Qwen2 42–52%). The
fast-path tests tie them by config where it matters (`tests/decoded_families.py`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from transformers import (
    GemmaConfig,
    GPT2Config,
    LlamaConfig,
    MistralConfig,
    PretrainedConfig,
    Qwen2Config,
)

from trainer.real_world.templates import CHATML, GEMMA, LLAMA3, MISTRAL

CONTEXT = 512
"""max_position_embeddings of every family but GPT-2."""

GPT2_CONTEXT = 256
"""GPT-2's learned positions: a context shorter than some jobs ask for."""


@dataclass(frozen=True)
class Size:
    """How big a family's checkpoint is; the families differ in everything else."""

    vocab: int
    """Tokenizer ids (a padded family's model has a few more)."""
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    words: int
    """Distinct prose words the tokenizer learns merges from (enough for `vocab`)."""

    def dims(self) -> dict[str, Any]:
        """The Llama-style config's keyword arguments (head_dim 64 at every size)."""
        return {"hidden_size": self.hidden, "num_hidden_layers": self.layers,
                "num_attention_heads": self.heads, "num_key_value_heads": self.kv_heads,
                "intermediate_size": self.intermediate, "max_position_embeddings": CONTEXT}


SIZES = {
    "tiny": Size(vocab=4000, hidden=128, layers=2, heads=2, kv_heads=2, intermediate=256,
                 words=3000),
    "large": Size(vocab=16300, hidden=512, layers=8, heads=8, kv_heads=2, intermediate=1408,
                  words=20000),
}
"""``tiny``: what every test trains (about 1M parameters, most of them the embeddings);
``large``: a Qwen2 of about 30M parameters, where matrix products rather than Python overhead
decide a step's time (the benchmarks' realistic size)."""


@dataclass(frozen=True)
class Family:
    name: str
    style: str
    """"byte_level" or "sentencepiece" (`trainer.real_world.tokenizer`)."""
    special_tokens: list[str]
    """In id order, from 0."""
    bos: str | None
    eos: str
    """The tokenizer's eos: what ends a completion (a chat model's end of turn)."""
    pad: str | None
    stops: list[str]
    """`generation_config.eos_token_id`, in order."""
    chat_template: str | None
    config: Callable[[int, Size], PretrainedConfig]
    """The architecture's config for a model vocabulary of that many ids, at a size."""
    unk: str | None = None
    add_bos: bool = False
    """The tokenizer prepends bos to what it encodes (Llama 3, Mistral, Gemma)."""
    prepend_space: bool = False
    """sentencepiece only: a text starts with ``▁``."""
    vocab_multiple: int = 1
    """The model's vocabulary is the tokenizer's rounded up to this (Qwen2 pads its own)."""
    save: dict[str, Any] = field(default_factory=dict)
    """`save_pretrained` arguments: ``max_shard_size`` for a sharded checkpoint, and
    ``dtype`` for the weights as stored."""


def _qwen2(vocab: int, size: Size) -> PretrainedConfig:
    return Qwen2Config(**size.dims(), vocab_size=vocab, rope_theta=1_000_000.0,
                       tie_word_embeddings=False, use_sliding_window=False)


def _llama3(vocab: int, size: Size) -> PretrainedConfig:
    return LlamaConfig(**size.dims(), vocab_size=vocab, tie_word_embeddings=False,
                       rope_parameters={"rope_type": "llama3", "rope_theta": 500_000.0,
                                        "factor": 8.0, "low_freq_factor": 1.0,
                                        "high_freq_factor": 4.0,
                                        "original_max_position_embeddings": 128})


def _mistral(vocab: int, size: Size) -> PretrainedConfig:
    return MistralConfig(**size.dims(), vocab_size=vocab, sliding_window=4096,
                         tie_word_embeddings=False, rope_theta=1_000_000.0)


def _gemma(vocab: int, size: Size) -> PretrainedConfig:
    return GemmaConfig(**size.dims(), vocab_size=vocab, head_dim=64,
                       hidden_activation="gelu_pytorch_tanh", tie_word_embeddings=False)


def _gpt2(vocab: int, size: Size) -> PretrainedConfig:
    """No dropout (GPT-2 ships 0.1 on residuals, embeddings and attention): with it, the
    pretrained tiny GPT-2 answered 0.5% of the held-out problems and supervised training took
    it to 7.5%; without, 1% and 26.5%. A user's checkpoint keeps whatever its config says."""
    return GPT2Config(vocab_size=vocab, n_embd=size.hidden, n_layer=size.layers,
                      n_head=size.heads, bos_token_id=0, eos_token_id=0,
                      n_positions=GPT2_CONTEXT, tie_word_embeddings=False,
                      resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)


FAMILIES: dict[str, Family] = {
    "qwen2": Family(
        name="qwen2", style="byte_level",
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        bos=None, eos="<|im_end|>", pad="<|endoftext|>", stops=["<|im_end|>", "<|endoftext|>"],
        chat_template=CHATML, config=_qwen2, vocab_multiple=128,
        save={"max_shard_size": "400KB"}),
    "llama3": Family(
        name="llama3", style="byte_level",
        special_tokens=["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
                        "<|end_header_id|>", "<|eom_id|>", "<|eot_id|>", "<|python_tag|>"],
        bos="<|begin_of_text|>", eos="<|eot_id|>", pad=None,
        stops=["<|end_of_text|>", "<|eom_id|>", "<|eot_id|>"],
        chat_template=LLAMA3, config=_llama3, add_bos=True),
    "mistral": Family(
        name="mistral", style="sentencepiece", special_tokens=["<unk>", "<s>", "</s>"],
        bos="<s>", eos="</s>", pad=None, unk="<unk>", stops=["</s>"],
        chat_template=MISTRAL, config=_mistral, prepend_space=True, add_bos=True),
    "gemma": Family(
        name="gemma", style="sentencepiece",
        special_tokens=["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"],
        bos="<bos>", eos="<eos>", pad="<pad>", unk="<unk>", stops=["<eos>", "<end_of_turn>"],
        chat_template=GEMMA, config=_gemma, add_bos=True,
        save={"dtype": "bfloat16"}),
    "gpt2": Family(
        name="gpt2", style="byte_level", special_tokens=["<|endoftext|>"],
        bos="<|endoftext|>", eos="<|endoftext|>", pad=None, unk="<|endoftext|>",
        stops=["<|endoftext|>"], chat_template=None, config=_gpt2),
}
"""Every family, by name."""

CHAT_FAMILIES = [name for name, family in FAMILIES.items() if family.chat_template]
