"""The demo world's tiny Llama: the real `LlamaForCausalLM`, so every loader and vLLM serve it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerBase

from trainer.demo_world.tokenizer import END, build_tokenizer

TINY_LLAMA: dict[str, Any] = {
    "hidden_size": 128,
    # head_dim 64: the smallest head size vLLM's CPU attention backend accepts.
    "num_attention_heads": 2,
    "num_key_value_heads": 2,
    "num_hidden_layers": 2,
    "intermediate_size": 256,
    "max_position_embeddings": 256,
    "tie_word_embeddings": False,
    # transformers 5 spells torch_dtype as dtype (the old name still works, with a warning).
    "dtype": "float32",
}
"""`LlamaConfig` keyword arguments of the demo model (about 0.35M parameters)."""


def build_model(
    tokenizer: PreTrainedTokenizerBase, seed: int = 0, **overrides: Any
) -> LlamaForCausalLM:
    """A randomly initialised tiny Llama sized to ``tokenizer``; the same weights for a seed.

    ``overrides`` replace `TINY_LLAMA` entries (e.g. ``num_hidden_layers=1``). The generation
    config stops at ``<eos>`` and at the chat turn end ``<|end|>``.
    """
    config = LlamaConfig(
        **{**TINY_LLAMA, **overrides},
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    # fork_rng keeps the caller's global torch RNG untouched by our seeding.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = [
        tokenizer.eos_token_id,
        tokenizer.convert_tokens_to_ids(END),
    ]
    return model


def save_random_base_model(path: Path, seed: int = 0) -> Path:
    """Write the demo tokenizer and a randomly initialised tiny model into ``path``; return it.

    The "tiny real model" for tests that need something `from_pretrained` can load but do not
    need it to know arithmetic.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer()
    tokenizer.save_pretrained(path)
    build_model(tokenizer, seed=seed).save_pretrained(path)
    return path
