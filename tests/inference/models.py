"""Tiny models the inference tests register: a LoRA adapter and value models over the demo base."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoModelForTokenClassification, AutoTokenizer


def make_lora_adapter(base: Path, out: Path, seed: int = 3) -> Path:
    """A peft LoRA adapter on the attention projections with non-zero B (so it changes outputs)."""
    from peft import LoraConfig, get_peft_model

    model = AutoModelForCausalLM.from_pretrained(base)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=16,
                                                  target_modules=["q_proj", "v_proj"]))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(parameter, std=0.5)
    peft_model.save_pretrained(out)
    return out


def make_value_model(base: Path, out: Path, seed: int, *, extra_token: str | None = None) -> Path:
    """The base's backbone with a seeded random scalar head, saved with a tokenizer: the base's,
    or the base's plus ``extra_token`` (a value model VAS must refuse)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForTokenClassification.from_pretrained(base, num_labels=1)
        torch.nn.init.normal_(model.score.weight, std=2.0)
    tokenizer = AutoTokenizer.from_pretrained(base)
    if extra_token is not None:
        tokenizer.add_tokens([extra_token])
    out.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(out)
    model.save_pretrained(out)
    return out
