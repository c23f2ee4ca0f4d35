"""The model a method trains: a causal LM in float32, or a LoRA adapter over one (peft)."""

from __future__ import annotations

from pathlib import Path

import torch
from peft import LoraConfig as PeftLoraConfig
from peft import PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, PreTrainedModel

from services.methods import LoraConfig
from trainer.checkpoint import model_dir

CausalLM = PreTrainedModel | PeftModel
"""What a method trains: a causal LM, or one wrapped by peft (which then saves its adapter only)."""

def load_model(
    base_model_path: Path, lora: LoraConfig | None, resume_from: Path | None, device: torch.device
) -> CausalLM:
    """The model to train: base weights (or a checkpoint's), wrapped in a LoRA adapter if asked.

    Weights stay in float32: the optimizer updates them directly, with no master copy.
    """
    if lora is None:
        source = model_dir(resume_from) if resume_from is not None else base_model_path
        return AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32, device_map=device)
    base = AutoModelForCausalLM.from_pretrained(
        base_model_path, dtype=torch.float32, device_map=device
    )
    if resume_from is not None:
        return PeftModel.from_pretrained(base, model_dir(resume_from), is_trainable=True)
    config = PeftLoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,  # type: ignore[arg-type]  # annotated int; peft computes alpha / r
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(base, config)
