"""Supervised fine-tuning (SFT): full weights or a LoRA adapter, resumable, step by step.

An optimizer step takes the next `batch_size * gradient_accumulation_steps` rows of the seeded
row stream (`trainer.loop.StepLoop`; a step may cross an epoch boundary), split into
`gradient_accumulation_steps` micro-batches, so the run is `ceil(rows * n_epochs / rows_per_step)`
steps long and a checkpoint's stream position is all a resumed run needs to see the same rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import transformers
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler
from transformers import AutoTokenizer

from modeling.logprobs import token_nll
from modeling.sequences import (
    SupervisedBatch,
    TokenizedExample,
    collate,
    tokenize_supervised_row,
)
from services.methods import SupervisedHyperparameters
from trainer.algorithms.reductions import masked_count, masked_sum
from trainer.algorithms.sft import completion_token_count, sft_loss
from trainer.context import TrainingContext, TrainingResult
from trainer.loop import (
    StepLoop,
    StepOutcome,
    build_optimizer,
    build_scheduler,
    chunk,
    clip_and_step,
    count_steps,
    pick_device,
)
from trainer.trained_model import load_model


@dataclass
class StepOutput:
    loss: float
    """Token-mean cross-entropy over the step's completion tokens."""
    grad_norm: float
    """Gradient norm before clipping."""
    tokens: int
    """Real tokens (prompt and completion) read in the step."""


def optimizer_step(
    model: nn.Module,
    micro_batches: list[SupervisedBatch],
    optimizer: Optimizer,
    scheduler: LRScheduler,
    max_grad_norm: float,
) -> StepOutput:
    """Accumulate gradients over the micro-batches, clip, and step optimizer and schedule."""
    step_completion_tokens = sum(completion_token_count(b.labels) for b in micro_batches)
    loss_total = 0.0
    for batch in micro_batches:
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        loss = sft_loss(logits, batch.labels, normalizer=float(max(step_completion_tokens, 1)))
        loss.backward()
        loss_total += loss.item()
    grad_norm = clip_and_step(model, optimizer, scheduler, max_grad_norm)
    tokens = sum(batch.num_tokens for batch in micro_batches)
    return StepOutput(loss=loss_total, grad_norm=grad_norm, tokens=tokens)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    examples: list[TokenizedExample],
    batches: list[list[int]],
    pad_id: int,
    device: torch.device,
) -> float:
    """Token-mean cross-entropy over all completion tokens of `examples`, batch by batch."""
    model.eval()
    nll_total, token_total = 0.0, 0.0
    for indices in batches:
        batch = collate([examples[i] for i in indices], pad_id).to(device)
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        nll, mask = token_nll(logits, batch.labels)  # (B, T-1), (B, T-1)
        nll_total += masked_sum(nll, mask).item()
        token_total += masked_count(mask).item()
    model.train()
    return nll_total / max(token_total, 1.0)


class SupervisedTrainer(StepLoop):
    """One SFT run: built from a context, trained step by step, reporting through it."""

    hp: SupervisedHyperparameters

    def __init__(self, ctx: TrainingContext) -> None:
        hp: SupervisedHyperparameters = ctx.hyperparameters
        self.ctx, self.hp = ctx, hp
        transformers.set_seed(ctx.seed)
        self.device = pick_device()
        self.tokenizer = AutoTokenizer.from_pretrained(ctx.base_model_path)
        pad_id = self.tokenizer.pad_token_id
        self.pad_id: int = pad_id if pad_id is not None else self.tokenizer.eos_token_id
        self.train_examples = self._tokenize(ctx.training_rows)
        self.valid_examples = self._tokenize(ctx.validation_rows or [])
        if not self.train_examples:
            raise ValueError("the training file has no rows")
        self.total_steps = count_steps(len(self.train_examples), hp)
        self.model = load_model(ctx.base_model_path, hp.lora, ctx.resume_from, self.device)
        self.model.train()
        self.optimizer = build_optimizer(self.model, hp)
        self.scheduler = build_scheduler(self.optimizer, hp, self.total_steps)
        self.resume(ctx.resume_from)

    def _tokenize(self, rows: list[dict[str, Any]]) -> list[TokenizedExample]:
        examples = [
            tokenize_supervised_row(self.tokenizer, row, self.hp.max_seq_length) for row in rows
        ]
        empty = sum(example.num_completion_tokens == 0 for example in examples)
        if empty:
            self.ctx.log(f"{empty} rows have no completion token within max_seq_length")
        return examples

    def _micro_batches(self, indices: list[int]) -> list[SupervisedBatch]:
        return [
            collate([self.train_examples[i] for i in rows], self.pad_id).to(self.device)
            for rows in chunk(indices, self.hp.batch_size)
        ]

    def _validation_loss(self) -> float:
        batches = chunk(list(range(len(self.valid_examples))), self.hp.batch_size)
        return evaluate(self.model, self.valid_examples, batches, self.pad_id, self.device)

    @property
    def has_validation(self) -> bool:
        return bool(self.valid_examples)

    def validation_metrics(self) -> dict[str, float]:
        return {"valid_loss": self._validation_loss()}

    @property
    def n_rows(self) -> int:
        return len(self.train_examples)

    def step(self, indices: list[int]) -> StepOutcome:
        output = optimizer_step(
            self.model,
            self._micro_batches(indices),
            self.optimizer,
            self.scheduler,
            self.hp.max_grad_norm,
        )
        return StepOutcome({"train_loss": output.loss, "grad_norm": output.grad_norm},
                           output.tokens)

    def train(self) -> TrainingResult:
        return self._save_final(self.run_steps())

    def _save_final(self, metrics: dict[str, float]) -> TrainingResult:
        self.ctx.output_dir.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(str(self.ctx.output_dir))
        self.tokenizer.save_pretrained(self.ctx.output_dir)
        return TrainingResult(
            output_dir=self.ctx.output_dir,
            trained_tokens=self.state.trained_tokens,
            kind="fine_tuned" if self.hp.lora is None else "lora_adapter",
            final_metrics=metrics,
        )


def run(ctx: TrainingContext) -> TrainingResult:
    """Train per ctx.hyperparameters (SupervisedHyperparameters); raises JobStopped if stopped."""
    return SupervisedTrainer(ctx).train()
