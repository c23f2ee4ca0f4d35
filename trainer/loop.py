"""What every step-by-step training method shares: optimizer, schedule and the step loop.

A method subclasses `StepLoop`, builds its model, optimizer and scheduler with the helpers
here, and supplies one step over the rows the loop hands it (`step`) and its validation
metrics. The loop owns the rest: the seeded row stream and the position in it (epochs and
resume), the learning rate read before the step, timing and tokens/s, cancellation checks
before each step, metrics, evaluation every `eval_every` steps, and checkpoints every
`checkpoint_every` steps and at the end.
"""

from __future__ import annotations

import gc
import math
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.optim import AdamW, Optimizer
from torch.optim.lr_scheduler import LRScheduler
from transformers import get_scheduler

from services.methods import OptimizerHyperparameters, TrainingHyperparameters
from trainer.checkpoint import (
    TrainingState,
    load_checkpoint,
    prune_checkpoints,
    read_loop_state,
    save_checkpoint,
)
from trainer.context import TrainingContext
from trainer.data import stream_rows

CHECKPOINTS_KEPT = 2
# Our scheduler names → transformers' (a constant rate still honours warmup_ratio).
SCHEDULER_NAMES: dict[str, str] = {
    "constant": "constant_with_warmup",
    "linear": "linear",
    "cosine": "cosine",
}


@contextmanager
def heap_frozen() -> Iterator[None]:
    """Python's cyclic collector leaves what exists now alone until the block ends: the
    modules, model and tokenizer a method loaded (about a million objects) are not scanned
    again by every full collection. One full collection in the middle of a step took 250–345
    ms against a 50 ms GRPO step of the demo model, in about half of all 10-step benchmark
    runs (bench/RESULTS.md §11). Garbage is collected first, so nothing unreachable is kept, and
    the objects go back to the collector when the block ends (a worker runs job after job)."""
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def pick_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def count_steps(n_rows: int, hp: TrainingHyperparameters) -> int:
    """Optimizer steps of the whole run: every row once per epoch, capped by max_steps."""
    rows_per_step = hp.batch_size * hp.gradient_accumulation_steps
    steps = math.ceil(n_rows * hp.n_epochs / rows_per_step)
    return steps if hp.max_steps is None else min(steps, hp.max_steps)


def build_optimizer(model: nn.Module, hp: OptimizerHyperparameters) -> AdamW:
    """AdamW on the trainable parameters; like nanoGPT, biases and norm gains are not decayed."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in trainable if p.dim() >= 2], "weight_decay": hp.weight_decay},
        {"params": [p for p in trainable if p.dim() < 2], "weight_decay": 0.0},
    ]
    # fused: one kernel for every parameter (TRL's default optimizer too), on CPU as on GPU
    return AdamW(groups, lr=hp.effective_learning_rate, fused=True)


def build_scheduler(
    optimizer: Optimizer, hp: OptimizerHyperparameters, total_steps: int
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


@dataclass
class StepOutcome:
    metrics: dict[str, float]
    """The step's own metrics (losses, statistics); the loop adds rate, timing and epoch."""
    tokens: int
    """Real tokens the step read (for tokens/s and the job's trained tokens)."""


START = TrainingState(step=0, epoch=0, index_in_epoch=0, trained_tokens=0)


class StepLoop(ABC):
    """The step loop of one run; subclasses set the attributes below in their __init__."""

    ctx: TrainingContext
    hp: Any
    """The method's hyperparameters: eval_every and checkpoint_every; batch_size,
    gradient_accumulation_steps and n_epochs unless rows_per_step and n_epochs are overridden."""
    total_steps: int
    state: TrainingState = START
    model: Any
    """The model being trained (a transformers or peft model)."""
    optimizer: Optimizer
    scheduler: LRScheduler
    tokenizer: Any

    @property
    @abstractmethod
    def n_rows(self) -> int:
        """Rows in the stream's epoch (training rows, rollouts, prompts)."""

    @property
    def rows_per_step(self) -> int:
        return self.hp.batch_size * self.hp.gradient_accumulation_steps

    @property
    def stream_seed(self) -> int:
        return self.ctx.seed

    @property
    def n_epochs(self) -> int | None:
        """Epochs over the rows; None: as many as `total_steps` takes."""
        return self.hp.n_epochs

    @abstractmethod
    def step(self, indices: list[int]) -> StepOutcome:
        """One optimizer step (or one round of them) on the rows ``indices``."""

    def resume(self, checkpoint: Path | None) -> None:
        """Restore optimizer, schedule, RNG and stream position from ``checkpoint`` (the
        model was built from its weights already)."""
        if checkpoint is not None:
            self.state = load_checkpoint(checkpoint, self.optimizer, self.scheduler)
            self.load_loop_state(read_loop_state(checkpoint))
            self.ctx.log(f"resumed from checkpoint at step {self.state.step}")

    def loop_state(self) -> dict[str, Any]:
        """What the method keeps between steps beyond model, optimizer, schedule and RNG."""
        return {}

    def load_loop_state(self, state: dict[str, Any]) -> None:
        """Restore what `loop_state` returned."""

    def write_checkpoint_extras(self, checkpoint: Path) -> None:
        """Write what else the method keeps into a checkpoint folder being written."""

    def next_rows(self) -> list[int]:
        """The next step's row indices: the stream from where the run is."""
        n_rows = self.n_rows
        position = self.state.rows_consumed(n_rows)
        count = self.rows_per_step
        if self.n_epochs is not None:
            count = min(count, n_rows * self.n_epochs - position)
        return stream_rows(n_rows, self.stream_seed, position, count)

    def train_one_step(self) -> dict[str, float]:
        """Take the next rows, run `step` on them, advance the state; the step's metrics."""
        indices = self.next_rows()
        learning_rate = float(self.scheduler.get_last_lr()[0])
        started = time.perf_counter()
        outcome = self.step(indices)
        elapsed = time.perf_counter() - started
        self.state = self.state.after_step(self.n_rows, len(indices), outcome.tokens)
        return {**outcome.metrics, "learning_rate": learning_rate,
                "tokens_per_second": outcome.tokens / max(elapsed, 1e-9),
                "step_seconds": elapsed,
                "epoch": self.state.rows_consumed(self.n_rows) / self.n_rows}

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
            loop_state=self.loop_state(),
            write_more=self.write_checkpoint_extras,
        )
        prune_checkpoints(self.ctx.checkpoint_root, keep=CHECKPOINTS_KEPT)
        self.ctx.on_checkpoint(self.state.step, path, metrics)

    def run_steps(self) -> dict[str, float]:
        """Train until total_steps; return the last step's metrics (with validation ones)."""
        self.ctx.report_total_steps(self.total_steps)
        with heap_frozen():
            metrics, evaluated = self._steps()
        if self.has_validation and not evaluated:  # resumed at the last step
            metrics.update(self.validation_metrics())
        return metrics

    def _steps(self) -> tuple[dict[str, float], bool]:
        """The steps left; the last one's metrics, and whether they include validation's."""
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
        return metrics, evaluated


def without_dropout(model: torch.nn.Module) -> None:
    """Every dropout module of ``model`` at p = 0: training mode keeps its other behaviour."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
