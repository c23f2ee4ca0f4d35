"""Reward-model training: a classifier or an implicit (log-probability) reward head, resumable.

Preference rows train one scalar head with the Bradley-Terry loss; ratings rows train one head
per objective (sorted names) by masked regression (`trainer.algorithms.reward`). With `head`
"implicit" the model stays a causal LM and the reward is β·Σ log π(y|x) over the response
(`trainer.methods.reward_objectives.ImplicitPreferenceObjective`); its folders carry
`alignd_reward.json` (`trainer.reward_head`), which tells the reward service how to read it.
The step loop, optimizer and schedule are the supervised method's (`trainer.loop`): an
optimizer step reads the next `batch_size * gradient_accumulation_steps` rows (pairs) of the
seeded row stream.

Ensembles (`ensemble_size` k > 1) train k members one after another inside the job, member i
from seed + i (its head's initialisation and its row order). Step numbers continue across
members: member i owns steps (i·S, (i+1)·S] where S is one member's step count, and a
`member` metric says which member a step belongs to. A finished member is saved to
``checkpoint_root/members/member-<i>`` before the checkpoint of its last step, so a job resumed
at any checkpoint, mid-member or between members, ends with the same weights. The output is a
save_pretrained folder (kind ``reward_model``), or for k > 1 one per member in
``member-<i>/`` plus ``ensemble.json`` (kind ``reward_ensemble``).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
import transformers
from transformers import AutoTokenizer, PreTrainedModel

from modeling.heads import ImplicitHead, implicit_head, write_head
from services.methods import RewardModelHyperparameters
from trainer.checkpoint import TrainingState, load_checkpoint, model_dir, read_training_state
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
from trainer.methods.reward_objectives import OBJECTIVES, RewardObjective, detach
from trainer.reward_data import PREFERENCE_OBJECTIVES, data_kind, rating_objectives

MEMBERS_DIR = "members"
ENSEMBLE_FILE = "ensemble.json"


# -- the model ----------------------------------------------------------------------------------


def save_reward_model(model: PreTrainedModel, tokenizer: Any, head: ImplicitHead | None,
                      target: Path) -> None:
    """Weights, tokenizer and (implicit head) `alignd_reward.json` into `target`."""
    model.save_pretrained(str(target))
    tokenizer.save_pretrained(str(target))
    write_head(target, head)


def save_member(model: PreTrainedModel, tokenizer: Any, head: ImplicitHead | None,
                target: Path) -> None:
    """save_reward_model into `target` atomically (written under a scratch name, renamed)."""
    partial = target.with_name(target.name + ".tmp")
    shutil.rmtree(partial, ignore_errors=True)
    save_reward_model(model, tokenizer, head, partial)
    if target.exists():
        shutil.rmtree(target)
    os.replace(partial, target)


# -- the run ------------------------------------------------------------------------------------


class RewardModelTrainer(StepLoop):
    """One reward-model job: k members trained in turn, steps numbered across the job."""

    hp: RewardModelHyperparameters
    objective: RewardObjective

    def __init__(self, ctx: TrainingContext) -> None:
        hp: RewardModelHyperparameters = ctx.hyperparameters
        self.ctx, self.hp, self.device = ctx, hp, pick_device()
        self.tokenizer = AutoTokenizer.from_pretrained(ctx.base_model_path)
        pad_id = self.tokenizer.pad_token_id
        self.pad_id: int = pad_id if pad_id is not None else self.tokenizer.eos_token_id
        if not ctx.training_rows:
            raise ValueError("the training file has no rows")
        self.kind = data_kind(ctx.training_rows)
        if ctx.validation_rows and data_kind(ctx.validation_rows) != self.kind:
            raise ValueError(f"the validation rows must be {self.kind} rows, like training's")
        if (hp.head, self.kind) not in OBJECTIVES:
            raise ValueError(f"head {hp.head!r} trains on preference rows only, not {self.kind}")
        objectives = (PREFERENCE_OBJECTIVES if self.kind == "preference"
                      else rating_objectives(ctx.training_rows))
        self._check_weights(objectives)
        self.objective = OBJECTIVES[hp.head, self.kind](hp, self.pad_id, self.device, objectives,
                                                        ctx.base_model_path)
        self.head = implicit_head(hp, ctx.base_model, ctx.base_model_path)
        self.train_examples = self._tokenize(ctx.training_rows)
        self.valid_examples = self._tokenize(ctx.validation_rows or [])
        self.member_steps = count_steps(len(self.train_examples), hp)
        self.total_steps = self.member_steps * hp.ensemble_size
        self.state = TrainingState(step=0, epoch=0, index_in_epoch=0, trained_tokens=0)
        self._resume_or_start(ctx.resume_from)

    def _check_weights(self, objectives: list[str]) -> None:
        unknown = sorted(set(self.hp.objective_weights or {}) - set(objectives))
        if unknown:
            raise ValueError(f"objective_weights names {unknown}, which the data does not rate; "
                             f"its objectives are {objectives}")

    def _tokenize(self, rows: list[dict[str, Any]]) -> list[Any]:
        return [self.objective.tokenize(self.tokenizer, row, self.hp.max_seq_length)
                for row in rows]

    @property
    def member(self) -> int:
        """The member the next step trains (the last one once training is done)."""
        return min(self.state.step // self.member_steps, self.hp.ensemble_size - 1)

    def _resume_or_start(self, checkpoint: Path | None) -> None:
        if checkpoint is None:
            self._start_member(None)
            return
        saved = read_training_state(checkpoint)
        between_members = saved.step % self.member_steps == 0 and saved.step < self.total_steps
        if between_members:  # the checkpoint holds a finished member: start the next afresh
            self.state = TrainingState(saved.step, 0, 0, saved.trained_tokens)
            self._start_member(None)
        else:
            self.state = saved
            self._start_member(checkpoint)
        self.ctx.log(f"resumed from checkpoint at step {saved.step}")

    def _start_member(self, checkpoint: Path | None) -> None:
        """Build member `self.member`'s model, optimizer and schedule (or restore a checkpoint's)."""
        self.loaded_member = self.member
        transformers.set_seed(self.member_seed)
        source = model_dir(checkpoint) if checkpoint is not None else self.ctx.base_model_path
        self.model = self.objective.load_model(source)
        self.model.train()
        self.optimizer = build_optimizer(self.model, self.hp)
        self.scheduler = build_scheduler(self.optimizer, self.hp, self.member_steps)
        if checkpoint is not None:
            self.state = load_checkpoint(checkpoint, self.optimizer, self.scheduler)

    @property
    def member_seed(self) -> int:
        return self.ctx.seed + self.member

    def _member_dir(self, member: int) -> Path:
        return self.ctx.checkpoint_root / MEMBERS_DIR / f"member-{member}"

    @property
    def n_rows(self) -> int:
        return len(self.train_examples)

    @property
    def stream_seed(self) -> int:
        return self.member_seed

    def train_one_step(self) -> dict[str, float]:
        if self.member != self.loaded_member:  # the previous member just finished
            self.state = TrainingState(self.state.step, 0, 0, self.state.trained_tokens)
            self._start_member(None)
        member = self.member
        metrics = super().train_one_step()
        if self.hp.ensemble_size > 1:
            metrics["member"] = float(member)
            if self.state.step % self.member_steps == 0:
                save_member(self.model, self.tokenizer, self.head, self._member_dir(member))
        return metrics

    def step(self, indices: list[int]) -> StepOutcome:
        """Accumulate over micro-batches, each loss weighted by its share of the step."""
        micro_batches = [[self.train_examples[i] for i in rows]
                         for rows in chunk(indices, self.hp.batch_size)]
        total_weight = sum(self.objective.weight(examples) for examples in micro_batches)
        outputs = []
        for examples in micro_batches:
            output = self.objective.forward(self.model, examples)
            share = self.objective.weight(examples) / max(total_weight, 1.0)
            (self.objective.loss(output) * share).backward()
            outputs.append(detach(output))
        grad_norm = clip_and_step(self.model, self.optimizer, self.scheduler,
                                  self.hp.max_grad_norm)
        statistics = self.objective.statistics(self.objective.concat(outputs))
        metrics = {"train_loss": statistics.pop("loss"), **statistics, "grad_norm": grad_norm}
        return StepOutcome(metrics, sum(self.objective.tokens(e) for e in micro_batches))

    @property
    def has_validation(self) -> bool:
        return bool(self.valid_examples)

    @torch.no_grad()
    def validation_metrics(self) -> dict[str, float]:
        self.model.eval()
        outputs = [self.objective.forward(self.model, [self.valid_examples[i] for i in rows])
                   for rows in chunk(list(range(len(self.valid_examples))), self.hp.batch_size)]
        self.model.train()
        statistics = self.objective.statistics(self.objective.concat(outputs))
        return {f"valid_{name}": value for name, value in statistics.items()}

    def should_evaluate(self, step: int) -> bool:
        return step % self.hp.eval_every == 0 or step % self.member_steps == 0

    def should_checkpoint(self, step: int) -> bool:
        return step % self.hp.checkpoint_every == 0 or step % self.member_steps == 0

    def train(self) -> TrainingResult:
        return self._save_final(self.run_steps())

    def _save_final(self, metrics: dict[str, float]) -> TrainingResult:
        out = self.ctx.output_dir
        out.mkdir(parents=True, exist_ok=True)
        objectives = self.objective.objectives
        if self.hp.ensemble_size == 1:
            save_reward_model(self.model, self.tokenizer, self.head, out)
        else:
            members = [f"member-{i}" for i in range(self.hp.ensemble_size)]
            for i, name in enumerate(members):
                shutil.copytree(self._member_dir(i), out / name, dirs_exist_ok=True)
            ensemble = {"members": members, "objectives": objectives,
                        "objective_weights": self.hp.objective_weights}
            (out / ENSEMBLE_FILE).write_text(json.dumps(ensemble, indent=2))
        return TrainingResult(
            output_dir=out,
            trained_tokens=self.state.trained_tokens,
            kind="reward_model" if self.hp.ensemble_size == 1 else "reward_ensemble",
            final_metrics=metrics,
            metadata={"objectives": objectives, "objective_weights": self.hp.objective_weights,
                      "ensemble_size": self.hp.ensemble_size, "data_kind": self.kind,
                      "head": self.hp.head,
                      **(self.head.to_json() if self.head is not None else {})},
        )


def run(ctx: TrainingContext) -> TrainingResult:
    """Train per ctx.hyperparameters (RewardModelHyperparameters); raises JobStopped if stopped."""
    return RewardModelTrainer(ctx).train()
