"""The model online RL trains, and the frozen reference it is held near.

The policy is the job's base model (full weights, or a LoRA adapter over them), in float32 as
the optimizer updates it. The reference π_ref is the base model: with LoRA it is the same
weights with the adapter switched off (no second copy); otherwise a frozen copy, loaded only
when a KL term needs it.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import transformers
from torch import Tensor
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from modeling.logprobs import response_logits
from modeling.packing import packed_response_logits, supports_packing
from services.methods.reinforcement import ReinforcementHyperparameters
from trainer.checkpoint import TrainingState
from trainer.context import TrainingContext, TrainingResult
from trainer.loop import build_optimizer, build_scheduler, pick_device, without_dropout
from trainer.online.experience import LogitsFn
from trainer.online.shared_prompt import refusal_of as shared_prompt_refusal
from trainer.online.shared_prompt import shared_prompt_logits, supports_shared_prompt
from trainer.trained_model import load_model


@dataclass
class Policy:
    model: Any
    """A transformers causal LM, or a peft model over one (LoRA)."""
    tokenizer: Any
    device: torch.device
    pad_id: int
    context_length: int
    """The model's max_position_embeddings."""
    base_model_path: str
    lora: bool
    _reference: Any = field(default=None, repr=False)

    @classmethod
    def load(cls, ctx: TrainingContext, hp: ReinforcementHyperparameters) -> Policy:
        transformers.set_seed(ctx.seed)
        device = pick_device()
        tokenizer = AutoTokenizer.from_pretrained(ctx.base_model_path)
        pad = tokenizer.pad_token_id
        model = load_model(ctx.base_model_path, hp.lora, ctx.resume_from, device)
        model.train()
        if hp.disable_dropout:
            without_dropout(model)
        config = AutoConfig.from_pretrained(ctx.base_model_path)
        policy = cls(model=model, tokenizer=tokenizer, device=device,
                     pad_id=pad if pad is not None else tokenizer.eos_token_id,
                     context_length=int(getattr(config, "max_position_embeddings", 1 << 30)),
                     base_model_path=str(ctx.base_model_path), lora=hp.lora is not None)
        ctx.log(policy.training_forward())
        return policy

    def training_forward(self) -> str:
        """Which forward `_response_logits` runs the policy with and, when it is not the
        shared-prompt one, why: a job event, so a slow job says what made it slow."""
        refusal = shared_prompt_refusal(self.model)
        if refusal is None:
            return "training forward: shared prompt (each distinct prompt run once, no padding)"
        rows = "packed" if supports_packing(self.model, self.device) else "padded"
        return (f"training forward: transformers' own on {rows} rows; the shared-prompt "
                f"forward does not take this model: {refusal}")

    def optimizer(self, hp: ReinforcementHyperparameters,
                  total_steps: int) -> tuple[Optimizer, LRScheduler]:
        optimizer = build_optimizer(self.model, hp)
        return optimizer, build_scheduler(optimizer, hp, total_steps)

    def logits(self, temperature: float) -> LogitsFn:
        """The policy's response logits, with gradient."""
        def forward(sequences: Tensor, attention_mask: Tensor, response_length: int) -> Tensor:
            return self._response_logits(self.model, sequences, attention_mask,
                                         response_length, temperature)
        return forward

    def reference_logits(self, temperature: float) -> LogitsFn:
        """π_ref's response logits (no gradient): the adapter switched off, or a frozen copy."""
        def forward(sequences: Tensor, attention_mask: Tensor, response_length: int) -> Tensor:
            model, context = self._reference_model()
            with context, torch.no_grad():
                return self._response_logits(model, sequences, attention_mask,
                                             response_length, temperature)
        return forward

    def frozen_logits(self, folder: Path, name: str, temperature: float) -> LogitsFn:
        """The response logits (no gradient) of another model over the same tokens, e.g.
        RTO's DPO model; ``name`` is the field that named it, for errors."""
        if AutoTokenizer.from_pretrained(folder).get_vocab() != self.tokenizer.get_vocab():
            raise ValueError(f"{name} has another tokenizer than the base model; its "
                             "log-probabilities must be of the same tokens")
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32,
                                                     device_map=self.device)
        model.eval().requires_grad_(False)

        def forward(sequences: Tensor, attention_mask: Tensor, response_length: int) -> Tensor:
            with torch.no_grad():
                return self._response_logits(model, sequences, attention_mask,
                                             response_length, temperature)
        return forward

    def _response_logits(self, model: Any, sequences: Tensor, attention_mask: Tensor,
                         response_length: int, temperature: float) -> Tensor:
        """(B, T, V) response logits: a Llama's, Qwen2's, Mistral's or Gemma's with each
        distinct prompt run once and no padding (`trainer.online.shared_prompt`); another
        model's on packed rows (`modeling.packing`: no compute on the rows' padding) where it
        gives them the logits it gives padded rows; else on padded rows. Each check is made
        once per model."""
        if supports_shared_prompt(model):
            forward = shared_prompt_logits
        elif supports_packing(model, self.device):
            forward = packed_response_logits
        else:
            forward = response_logits
        return forward(model, sequences, attention_mask, response_length, temperature)

    def _reference_model(self) -> tuple[Any, contextlib.AbstractContextManager[Any]]:
        if self.lora:
            return self.model, self.model.disable_adapter()
        if self._reference is None:
            self._reference = AutoModelForCausalLM.from_pretrained(
                self.base_model_path, dtype=torch.float32, device_map=self.device)
            self._reference.eval().requires_grad_(False)
        return self._reference, contextlib.nullcontext()

    def save_final(self, ctx: TrainingContext, state: TrainingState, metrics: dict[str, float],
                   metadata: dict[str, Any]) -> TrainingResult:
        out = ctx.output_dir
        out.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(str(out))
        self.tokenizer.save_pretrained(out)
        return TrainingResult(output_dir=out, trained_tokens=state.trained_tokens,
                              kind="lora_adapter" if self.lora else "fine_tuned",
                              final_metrics=metrics, metadata=metadata)
