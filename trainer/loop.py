"""What every step-by-step training method shares: optimizer, schedule and the step loop.

A method subclasses `StepLoop`, builds its model, optimizer and scheduler with the helpers
here, and supplies one optimizer step (`train_one_step`) and its validation metrics; the loop
checks for cancellation before each step, reports metrics, evaluates every `eval_every` steps
and checkpoints every `checkpoint_every` steps and at the end.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any

import torch
from torch import nn
from torch.optim import AdamW, Optimizer
from torch.optim.lr_scheduler import LRScheduler
from transformers import get_scheduler

from services.methods import TrainingHyperparameters
from trainer.checkpoint import TrainingState, prune_checkpoints, save_checkpoint
from trainer.context import TrainingContext

CHECKPOINTS_KEPT = 2
# Our scheduler names → transformers' (a constant rate still honours warmup_ratio).
SCHEDULER_NAMES: dict[str, str] = {
    "constant": "constant_with_warmup",
    "linear": "linear",
    "cosine": "cosine",
}


def pick_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def count_steps(n_rows: int, hp: TrainingHyperparameters) -> int:
    """Optimizer steps of the whole run: every row once per epoch, capped by max_steps."""
    rows_per_step = hp.batch_size * hp.gradient_accumulation_steps
    steps = math.ceil(n_rows * hp.n_epochs / rows_per_step)
    return steps if hp.max_steps is None else min(steps, hp.max_steps)


def build_optimizer(model: nn.Module, hp: TrainingHyperparameters) -> AdamW:
    """AdamW on the trainable parameters; like nanoGPT, biases and norm gains are not decayed."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in trainable if p.dim() >= 2], "weight_decay": hp.weight_decay},
        {"params": [p for p in trainable if p.dim() < 2], "weight_decay": 0.0},
    ]
    return AdamW(groups, lr=hp.effective_learning_rate)


def build_scheduler(
    optimizer: Optimizer, hp: TrainingHyperparameters, total_steps: int
) -> LRScheduler:
    return get_scheduler(
        SCHEDULER_NAMES[hp.lr_scheduler],
        optimizer,
        num_warmup_steps=math.ceil(hp.warmup_ratio * total_steps),
        num_training_steps=total_steps,
    )


def clip_and_step(
    model: nn.Module, optimizer: Optimizer, scheduler: LRScheduler, max_grad_norm: float
) -> float:
    """Clip the accumulated gradients, step optimizer and schedule; return the norm before clipping."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    grad_norm = torch.nn.utils.clip_grad_norm_(trainable, max_grad_norm)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return float(grad_norm)


def chunk(indices: list[int], size: int) -> list[list[int]]:
    return [indices[start : start + size] for start in range(0, len(indices), size)]


class StepLoop(ABC):
    """The step loop of one run; subclasses set the attributes below in their __init__."""

    ctx: TrainingContext
    hp: TrainingHyperparameters
    total_steps: int
    state: TrainingState
    model: Any
    """The model being trained (a transformers or peft model)."""
    optimizer: Optimizer
    scheduler: LRScheduler
    tokenizer: Any

    @abstractmethod
    def train_one_step(self) -> dict[str, float]:
        """One optimizer step; advances self.state and returns the step's metrics."""

    @property
    def has_validation(self) -> bool:
        return False

    def validation_metrics(self) -> dict[str, float]:
        return {}

    def should_evaluate(self, step: int) -> bool:
        return step % self.hp.eval_every == 0 or step == self.total_steps

    def should_checkpoint(self, step: int) -> bool:
        return step % self.hp.checkpoint_every == 0 or step == self.total_steps

    def checkpoint(self, metrics: dict[str, float]) -> None:
        path = save_checkpoint(
            self.ctx.checkpoint_root,
            self.state,
            self.model,
            self.optimizer,
            self.scheduler,
            tokenizer=self.tokenizer,
        )
        prune_checkpoints(self.ctx.checkpoint_root, keep=CHECKPOINTS_KEPT)
        self.ctx.on_checkpoint(self.state.step, path, metrics)

    def run_steps(self) -> dict[str, float]:
        """Train until total_steps; return the last step's metrics (with validation ones)."""
        metrics: dict[str, float] = {}
        evaluated = False
        while self.state.step < self.total_steps:
            self.ctx.check_continue()
            metrics = self.train_one_step()
            step = self.state.step
            evaluated = self.has_validation and self.should_evaluate(step)
            if evaluated:
                metrics.update(self.validation_metrics())
            self.ctx.report_metrics(step, metrics)
            if self.should_checkpoint(step):
                self.checkpoint(metrics)
        if self.has_validation and not evaluated:  # resumed at the last step
            metrics.update(self.validation_metrics())
        return metrics
