"""Value-model training for Value Augmented Sampling (Han et al. 2024), resumable.

1. Rollouts, once per job: `samples_per_prompt` completions of every prompt row sampled from
   the frozen base model by the inference service's torch engine (`trainer.rollout`), each
   scored by the reward service with the job's reward spec. They are saved in the checkpoint
   folder (`trainer.value_data`) before the first step, so a resumed job trains on exactly the
   same data.
2. Fit: the base model's weights under a token-classification head with one output
   (`AutoModelForTokenClassification`, num_labels=1), the head's weight and bias zeroed so that
   V ≡ 0 before training. logits[b, t, 0] = V(s_≤t). Every state from the prompt's last token to
   the completion's last is regressed on its TD(λ) target (`trainer.algorithms.td_lambda`).

The targets are recomputed at every optimizer step from the values of that step's own forward
pass, detached: they always bootstrap from the current model, as TD(λ) does, at no extra
forward pass (targets fixed once per epoch would chase a value function many steps stale).
The step loop, optimizer and schedule are the supervised method's (`trainer.loop`), over the
stream of rollouts: a step reads the next `batch_size * gradient_accumulation_steps`.
"""

from __future__ import annotations

import time

import torch
import transformers
from torch import Tensor
from transformers import (
    AutoTokenizer,
)

from modeling.heads import load_value_model
from modeling.sequences import encode_prompt
from services.methods import ValueModelHyperparameters
from trainer.algorithms.reductions import masked_count
from trainer.algorithms.td_lambda import explained_variance, lambda_returns, value_loss
from trainer.checkpoint import model_dir
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
from trainer.online.sampler import RolloutOptions, sample_completions
from trainer.online.scoring import reward_item, score_items
from trainer.value_data import (
    ROLLOUTS_FILE,
    Rollout,
    ValueBatch,
    collate_values,
    load_rollouts,
    save_rollouts,
)

VALIDATION_SEED_OFFSET = 1_000_003
"""Validation prompts are sampled from seed + this, apart from the training prompts' draws."""


class ValueModelTrainer(StepLoop):
    """One value-model job: rollouts made (or read back), then TD(λ) regression step by step."""

    hp: ValueModelHyperparameters

    def __init__(self, ctx: TrainingContext) -> None:
        hp: ValueModelHyperparameters = ctx.hyperparameters
        self.ctx, self.hp, self.device = ctx, hp, pick_device()
        transformers.set_seed(ctx.seed)
        self.tokenizer = AutoTokenizer.from_pretrained(ctx.base_model_path)
        pad_id = self.tokenizer.pad_token_id
        self.pad_id: int = pad_id if pad_id is not None else self.tokenizer.eos_token_id
        if not ctx.training_rows:
            raise ValueError("the training file has no rows")
        splits = self._rollouts()
        self.rollouts, self.valid_rollouts = splits["train"], splits.get("valid", [])
        self.total_steps = count_steps(len(self.rollouts), hp)
        source = model_dir(ctx.resume_from) if ctx.resume_from else ctx.base_model_path
        self.model = load_value_model(source, self.pad_id, self.device,
                                      zero_head=ctx.resume_from is None)
        self.model.train()
        self.optimizer = build_optimizer(self.model, hp)
        self.scheduler = build_scheduler(self.optimizer, hp, self.total_steps)
        self.resume(ctx.resume_from)

    # -- rollouts --------------------------------------------------------------------------------

    def _rollouts(self) -> dict[str, list[Rollout]]:
        path = self.ctx.checkpoint_root / ROLLOUTS_FILE
        if path.is_file():  # resumed, or restarted after sampling: the same data again
            return load_rollouts(path)
        if not self.ctx.reward_url:
            raise ValueError("no reward service to score completions with; set "
                             "ALIGND_REWARD_URL for the worker")
        splits = {"train": self._sample_and_score(self.ctx.training_rows, self.ctx.seed)}
        if self.ctx.validation_rows:
            splits["valid"] = self._sample_and_score(self.ctx.validation_rows,
                                                     self.ctx.seed + VALIDATION_SEED_OFFSET)
        save_rollouts(path, splits)
        return splits

    def _sample_and_score(self, rows: list[dict], seed: int) -> list[Rollout]:
        hp = self.hp
        max_prompt = hp.max_seq_length - hp.max_new_tokens
        prompts = [encode_prompt(self.tokenizer, row, max_prompt) for row in rows]
        options = RolloutOptions(samples_per_prompt=hp.samples_per_prompt,
                                 max_new_tokens=hp.max_new_tokens, temperature=hp.temperature,
                                 top_k=hp.top_k, seed=seed)
        started = time.perf_counter()
        completions = sample_completions(self.ctx.base_model_path, self.tokenizer, prompts,
                                         options, batch_size=hp.rollout_batch_size,
                                         device=str(self.device))
        sampled = time.perf_counter() - started
        assert self.ctx.reward_url is not None
        rewards = score_items(self.ctx.reward_url,
                              [reward_item(rows[c.prompt], c.text) for c in completions],
                              hp.reward, service_key=self.ctx.reward_key,
                              project=self.ctx.project_id,
                              retry_seconds=self.ctx.reward_retry_seconds)
        finished = sum(c.finished for c in completions)
        self.ctx.log(f"sampled {len(completions)} completions of {len(rows)} prompts from the "
                     f"base model in {sampled:.1f} s ({finished} ended on a stop token); "
                     f"mean reward {sum(rewards) / len(rewards):.4f}")
        return [Rollout(c.prompt, prompts[c.prompt], c.token_ids, c.text, reward)
                for c, reward in zip(completions, rewards)]

    # -- training --------------------------------------------------------------------------------

    def _values(self, batch: ValueBatch) -> Tensor:
        logits = self.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        return logits[..., 0]  # (B, T) V(s_≤t)

    def _targets(self, values: Tensor, batch: ValueBatch) -> Tensor:
        return lambda_returns(values, batch.rewards, batch.value_mask, self.hp.gamma,
                              self.hp.lambda_)  # (B, T)

    def _batches(self, rollouts: list[Rollout], indices: list[int]) -> list[ValueBatch]:
        return [collate_values([rollouts[i] for i in rows], self.pad_id, self.device)
                for rows in chunk(indices, self.hp.batch_size)]

    @property
    def n_rows(self) -> int:
        return len(self.rollouts)

    def step(self, indices: list[int]) -> StepOutcome:
        batches = self._batches(self.rollouts, indices)
        positions = float(sum(masked_count(b.value_mask).item() for b in batches))
        loss_total, fitted, targets = 0.0, [], []
        for batch in batches:
            values = self._values(batch)  # (B, T)
            returns = self._targets(values, batch)  # (B, T)
            loss = value_loss(values, returns, batch.value_mask, normalizer=positions)
            loss.backward()
            loss_total += loss.item()
            fitted.append(values.detach()[batch.value_mask])  # (N_i,)
            targets.append(returns[batch.value_mask])  # (N_i,)
        grad_norm = clip_and_step(self.model, self.optimizer, self.scheduler,
                                  self.hp.max_grad_norm)
        fitted_all, targets_all = torch.cat(fitted), torch.cat(targets)  # (N,), (N,)
        return StepOutcome({
            "value_loss": loss_total,
            "explained_variance": explained_variance(
                fitted_all, targets_all, torch.ones_like(targets_all, dtype=torch.bool)).item(),
            "mean_reward": sum(self.rollouts[i].reward for i in indices) / len(indices),
            "grad_norm": grad_norm,
        }, sum(b.num_tokens for b in batches))

    @property
    def has_validation(self) -> bool:
        return bool(self.valid_rollouts)

    @torch.no_grad()
    def validation_metrics(self) -> dict[str, float]:
        """Token-mean loss and explained variance on the validation prompts' rollouts."""
        self.model.eval()
        fitted, targets = [], []
        for batch in self._batches(self.valid_rollouts, list(range(len(self.valid_rollouts)))):
            values = self._values(batch)  # (B, T)
            fitted.append(values[batch.value_mask])
            targets.append(self._targets(values, batch)[batch.value_mask])
        self.model.train()
        fitted_all, targets_all = torch.cat(fitted), torch.cat(targets)  # (N,), (N,)
        everywhere = torch.ones_like(targets_all, dtype=torch.bool)
        return {
            "valid_value_loss": value_loss(fitted_all, targets_all, everywhere).item(),
            "valid_explained_variance":
                explained_variance(fitted_all, targets_all, everywhere).item(),
        }

    def train(self) -> TrainingResult:
        return self._save_final(self.run_steps())

    def _save_final(self, metrics: dict[str, float]) -> TrainingResult:
        out = self.ctx.output_dir
        out.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(str(out))
        self.tokenizer.save_pretrained(out)  # the base's tokenizer: VAS decodes with both
        return TrainingResult(
            output_dir=out,
            trained_tokens=self.state.trained_tokens,
            kind="value_model",
            final_metrics=metrics,
            metadata={"gamma": self.hp.gamma, "lambda": self.hp.lambda_,
                      "reward": self.hp.reward,
                      "base_model": self.ctx.base_model or str(self.ctx.base_model_path)},
        )


def run(ctx: TrainingContext) -> TrainingResult:
    """Train per ctx.hyperparameters (ValueModelHyperparameters); raises JobStopped if stopped."""
    return ValueModelTrainer(ctx).train()
