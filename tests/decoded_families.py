"""The real-style families (`trainer.real_world`) as the fast-path tests load them: each
checkpoint folder's model in float32 with larger random weights, so its logits are peaked (a
randomly initialised checkpoint's are near-uniform, where any rounding flips a sample) and its
biases and norm weights are not the zeros and ones a fresh model starts with (which would hide a
bias or norm applied wrongly); and a peft LoRA policy over one, as a LoRA job makes it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM

DECODED = ("qwen2", "llama3", "mistral", "gemma")
"""The families the batch decoder and the shared-prompt forward take."""


def peaked(model: Any, seed: int = 0) -> Any:
    """``model`` with every weight and bias redrawn from N(0, 0.3²) and every norm weight
    moved by N(0, 0.1²), from ``seed``; returned in eval mode."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in sorted(model.named_parameters()):
            noise = torch.randn(parameter.shape, generator=generator)
            if "norm" in name:
                parameter.add_(noise.to(parameter.dtype) * 0.1)
            else:
                parameter.copy_(noise * 0.3)
    return model.eval()


def family_model(folder: Path, **config: Any) -> Any:
    """The family checkpoint in ``folder`` (config attributes overridden by ``config``), in
    float32 with `peaked` weights."""
    return peaked(AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, **config))


def lora_over(model: Any, **settings: Any) -> Any:
    """A peft LoRA policy over ``model`` with peft's default target modules for its
    architecture (what a job's LoRA without target_modules gets), B non-zero; eval mode."""
    from peft import LoraConfig, get_peft_model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(2)  # A's initialisation
        policy = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, **settings))
    with torch.no_grad():
        for name, parameter in policy.named_parameters():
            if "lora_B" in name:
                parameter.normal_(std=0.3, generator=torch.Generator().manual_seed(len(name)))
    return policy.eval()
