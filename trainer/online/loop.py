"""The online loop: every step samples responses from the live policy, scores them with the
reward service, turns them into a `RolloutBatch` with the algorithm's advantages, and updates
the policy. The algorithms (`trainer.algorithms.registry`) differ only in their advantage
estimator, what their rollouts need (a greedy baseline, a critic) and their clip defaults.

A step reads `prompts_per_step` prompt rows of the seeded row stream (`StepLoop`), samples
`group_size` responses to each (and, for ReMax, the greedy one), filters them (PF-PPO) and runs
`update_epochs` passes of minibatch updates. Sampling seeds derive from the job's seed and the
step, so a resumed job draws the same responses a run without the crash would have.
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from inference.local import BatchGenerator, Generator, LocalGenerator, VllmGenerator
from modeling.sequences import UNLIMITED, encode_prompt
from services.methods.reinforcement import (
    PpoHyperparameters,
    ReinforcementHyperparameters,
    RtoHyperparameters,
)
from trainer.algorithms.kl_control import KLController
from trainer.algorithms.pf_ppo import filter_rollouts
from trainer.algorithms.registry import AdvantageOptions, Algorithm, get_algorithm
from trainer.context import TrainingContext, TrainingResult
from trainer.loop import StepLoop, StepOutcome
from trainer.online.batch import RolloutBatch
from trainer.online.critic import Critic, critic_source
from trainer.online.experience import (
    ExperienceMaker,
    Scored,
    advantage_statistics,
    padded,
    sequence_kl,
)
from trainer.online.policy import Policy
from trainer.online.sampler import Completion, RolloutOptions, Sampler
from trainer.online.scoring import (
    PendingScores,
    RewardNormalizer,
    RewardScorer,
    reward_item,
)
from trainer.online.update import PolicyUpdate, UpdateSettings

VALIDATION_SEED = 7_919


def step_seed(seed: int, step: int, purpose: str) -> int:
    return random.Random(f"online:{seed}:{step}:{purpose}").getrandbits(62)


class OnlineLoop(StepLoop):
    hp: ReinforcementHyperparameters

    def __init__(self, ctx: TrainingContext) -> None:
        self.ctx, self.hp = ctx, ctx.hyperparameters
        if not ctx.training_rows:
            raise ValueError("the training file has no rows")
        if ctx.reward is None or not ctx.reward_url:
            raise ValueError("no reward service to score responses with; set "
                             "ALIGND_REWARD_URL for the worker")
        self.algorithm: Algorithm = get_algorithm(self.hp.algorithm)
        self.policy = Policy.load(ctx, self.hp)
        self.model, self.tokenizer = self.policy.model, self.policy.tokenizer
        self.prompts = self._encode(ctx.training_rows, "training")
        self.valid_prompts = self._encode(ctx.validation_rows or [], "validation")
        self.total_steps = self.hp.max_steps
        self.optimizer, self.scheduler = self.policy.optimizer(self.hp, self._optimizer_steps())
        self.critic = self._critic() if self.algorithm.needs_critic else None
        self.kl = KLController(self.hp.beta, self.hp.kl_target, self.hp.kl_horizon)
        self.normalize = RewardNormalizer(self.hp.reward_normalization, self.hp.reward_clip)
        self.sampler = Sampler(ctx.base_model_path, self.tokenizer, self._generator(),
                               live_model=self.model)
        self.scorer = RewardScorer(ctx.reward_url, ctx.reward, service_key=ctx.reward_key,
                                   project=ctx.project_id,
                                   retry_seconds=ctx.reward_retry_seconds,
                                   between_tries=ctx.check_continue)
        self.experience = self._experience_maker()
        self.update = PolicyUpdate(self.policy.logits(self.hp.temperature), self.model,
                                   self.optimizer, self.scheduler, self._update_settings(),
                                   critic=self.critic)
        self.resume(ctx.resume_from)

    # -- set-up ----------------------------------------------------------------------------------

    def _encode(self, rows: list[dict[str, Any]], name: str) -> list[list[int]]:
        room = min(self.hp.max_seq_length, self.policy.context_length) - self.hp.max_new_tokens
        prompts = [encode_prompt(self.tokenizer, row, UNLIMITED) for row in rows]
        for index, ids in enumerate(prompts):
            if len(ids) > room:
                raise ValueError(
                    f"{name} prompt row {index} is {len(ids)} tokens long; the context "
                    f"(max_seq_length {self.hp.max_seq_length}, the model's "
                    f"{self.policy.context_length}) minus max_new_tokens "
                    f"({self.hp.max_new_tokens}) leaves {room}; shorten it or raise the limit")
        return prompts

    def _critic(self) -> Critic:
        hp = self.hp
        assert isinstance(hp, PpoHyperparameters)
        reward_model = None
        if hp.critic_model is not None:
            if self.ctx.resolve_model is None:
                raise ValueError("critic_model needs the model registry, which this run has not")
            reward_model = self.ctx.resolve_model(hp.critic_model)
        source, fresh_head = critic_source(self.ctx.base_model_path, reward_model)
        return Critic.load(source, fresh_head, self.policy.pad_id, self.policy.device, hp,
                           self._optimizer_steps(), self.ctx.resume_from)

    def _generator(self) -> Generator:
        engine = self.ctx.rollout_engine
        if engine.name == "vllm":
            return VllmGenerator(self.ctx.base_model_path, seed=self.ctx.seed,
                                 gpu_memory_utilization=engine.gpu_memory_utilization,
                                 kv_cache_gib=engine.kv_cache_gib)
        batch_size = max(self.hp.prompts_per_step * self.hp.group_size, 1)
        if engine.name == "batch":
            return BatchGenerator(max_batch_size=batch_size, device=str(self.policy.device),
                                  report=self.ctx.log)
        return LocalGenerator(max_batch_size=batch_size, device=str(self.policy.device))

    def _optimizer_steps(self) -> int:
        per_step = -(-self.hp.sequences_per_step // self.minibatch_size)
        return self.hp.max_steps * self.hp.update_epochs * per_step

    @property
    def on_policy(self) -> bool:
        """One update pass of one minibatch, with nothing before the update that needs
        log π_old (a KL penalty in the reward, RTO's dense rewards)."""
        hp = self.hp
        return (hp.update_epochs == 1 and self.minibatch_size >= hp.sequences_per_step
                and not (hp.kl_in == "reward" and hp.beta > 0)
                and not self.algorithm.needs_dpo_model)

    @property
    def minibatch_size(self) -> int:
        return self.hp.minibatch_size or self.hp.sequences_per_step

    def _experience_maker(self) -> ExperienceMaker:
        hp = self.hp
        options = AdvantageOptions(gamma=getattr(hp, "gamma", 1.0), lam=getattr(hp, "lam", 0.95),
                                   scale_rewards=getattr(hp, "scale_rewards", True),
                                   r_max=self._r_max())
        needs_reference = hp.beta > 0 or self.algorithm.needs_dpo_model
        return ExperienceMaker(
            policy=self.policy.logits(hp.temperature),
            reference=self.policy.reference_logits(hp.temperature) if needs_reference else None,
            critic=self.critic.values if self.critic else None, algorithm=self.algorithm,
            options=options,
            kl_estimator=hp.kl_estimator, kl_in_reward=hp.kl_in == "reward",
            whiten_advantages=hp.whiten_advantages, micro_batch_size=hp.micro_batch_size,
            pad_id=self.policy.pad_id, device=self.policy.device, on_policy=self.on_policy,
            **self._dense_rewards())

    def _r_max(self) -> float:
        """NGRPO's virtual reward, clipped as the rewards are (`RewardNormalizer`; the
        hyperparameters refuse normalisation and a KL in the reward beside it)."""
        return self.normalize.clipped(float(getattr(self.hp, "r_max", 1.0)))

    def _dense_rewards(self) -> dict[str, Any]:
        """RTO's DPO model and its β₁ and β₃; nothing for the other algorithms."""
        hp = self.hp
        if not self.algorithm.needs_dpo_model:
            return {}
        assert isinstance(hp, RtoHyperparameters)
        if self.ctx.resolve_model is None:
            raise ValueError("dpo_model needs the model registry, which this run has not")
        dense = self.policy.frozen_logits(self.ctx.resolve_model(hp.dpo_model), "dpo_model",
                                          hp.temperature)
        return {"dense": dense, "dense_coefficient": hp.beta_dpo,
                "reward_scale": hp.reward_coefficient}

    def _update_settings(self) -> UpdateSettings:
        hp = self.hp
        low, high = hp.clip_range()
        return UpdateSettings(
            policy_loss=self.algorithm.policy_loss, update_epochs=hp.update_epochs, minibatch_size=self.minibatch_size,
            micro_batch_size=hp.micro_batch_size, clip_low=low, clip_high=high,
            kl_in_loss=hp.kl_in == "loss", kl_estimator=hp.kl_estimator,
            entropy_coefficient=hp.entropy_coefficient, loss_aggregation=hp.loss_aggregation,
            max_new_tokens=hp.max_new_tokens, max_grad_norm=hp.max_grad_norm,
            value_coefficient=getattr(hp, "value_coefficient", 0.0),
            value_clip=getattr(hp, "value_clip", None), on_policy=self.on_policy,
            rollout_is_cap=hp.rollout_is_cap)

    # -- the StepLoop contract -------------------------------------------------------------------

    @property
    def n_rows(self) -> int:
        return len(self.prompts)

    @property
    def rows_per_step(self) -> int:
        return self.hp.prompts_per_step

    @property
    def n_epochs(self) -> int | None:
        return None

    def loop_state(self) -> dict[str, Any]:
        return {"kl": self.kl.state_dict(), "rewards": self.normalize.state_dict()}

    def write_checkpoint_extras(self, checkpoint: Path) -> None:
        if self.critic is not None:
            self.critic.save(checkpoint)

    def load_loop_state(self, state: dict[str, Any]) -> None:
        if state:
            self.kl.load_state_dict(state["kl"])
            self.normalize.load_state_dict(state["rewards"])

    def step(self, indices: list[int]) -> StepOutcome:
        """Sample, score, update. While the reward service scores (in its own process), the
        step does what the rewards do not change: padding, the no-grad forwards and the
        update's first forward; a rollout filter, which picks rows by reward, waits."""
        step = self.state.step
        started = time.perf_counter()
        completions = self._sample(indices, step)
        greedy = (self._greedy([self.prompts[i] for i in indices])  # ReMax's baseline
                  if self.algorithm.needs_greedy_baseline else None)
        sampled = time.perf_counter()
        pending = self._submit_scores(indices, completions, greedy)
        generator = torch.Generator().manual_seed(step_seed(self.ctx.seed, step, "update"))
        prompts = [self.prompts[indices[c.prompt]] for c in completions]
        responses = [c.token_ids for c in completions]
        prepared = opening = None
        if self._rollout_filter() is None:
            prepared = self.experience.prepare(prompts, responses)
            opening = self.update.open(prepared.sequences, prepared.attention_mask,
                                       prepared.mask.shape[1],
                                       [c.prompt for c in completions], generator)
        waiting = time.perf_counter()
        scored = self._scored(pending, prompts, responses, completions, greedy)
        waited = time.perf_counter() - waiting
        kept = self._filter(scored, step)
        if prepared is None:
            prepared = self.experience.prepare(kept.prompts, kept.responses)
        rewards, baseline = self.normalize.with_baseline(kept.rewards, kept.baseline_rewards)
        batch = self.experience.finish(
            prepared, rewards, self.kl.value, kept.group, baseline,
            kept.engine_logprobs if self.hp.rollout_is_cap is not None else None)
        metrics = self.update.run(batch, self.kl.value, generator, opening)
        self.sampler.mark_updated()
        updated = time.perf_counter()
        metrics.update(self._statistics(scored, kept, batch, completions))
        if self.hp.beta > 0:
            metrics["kl_coefficient"] = self.kl.value
            self.kl.update(metrics["kl"], batch.size)
        elapsed = updated - started
        response_tokens = sum(len(c.token_ids) for c in completions)
        metrics.update(rollout_seconds=sampled - started, score_seconds=waited,
                       score_latency_seconds=pending.latency,
                       update_seconds=updated - sampled - waited,
                       samples_per_second=len(completions) / elapsed,
                       response_tokens_per_second=response_tokens / elapsed)
        return StepOutcome(metrics, int(batch.attention_mask.sum()))

    # -- the parts of a step ---------------------------------------------------------------------

    def _sample(self, indices: list[int], step: int) -> list[Completion]:
        hp = self.hp
        options = RolloutOptions(samples_per_prompt=hp.group_size,
                                 max_new_tokens=hp.max_new_tokens, temperature=hp.temperature,
                                 top_k=hp.top_k, top_p=hp.top_p,
                                 seed=step_seed(self.ctx.seed, step, "rollout"))
        return self.sampler.sample([self.prompts[i] for i in indices], options)

    def _greedy(self, prompts: list[list[int]]) -> list[Completion]:
        options = RolloutOptions(samples_per_prompt=1, max_new_tokens=self.hp.max_new_tokens,
                                 temperature=0.0, top_k=0, seed=0)
        return self.sampler.sample(prompts, options)

    def _send(self, rows: list[dict[str, Any]], texts: list[str]) -> PendingScores:
        """Each text, as the response to its row, sent to the reward service."""
        return self.scorer.submit([reward_item(row, text)
                                   for row, text in zip(rows, texts, strict=True)])

    def _submit_scores(self, indices: list[int], completions: list[Completion],
                       greedy: list[Completion] | None) -> PendingScores:
        """The sampled responses, and the greedy ones (ReMax's baselines) in the same request,
        sent to the reward service."""
        rows = [self.ctx.training_rows[indices[c.prompt]] for c in completions]
        texts = [c.text for c in completions]
        if greedy is not None:
            rows += [self.ctx.training_rows[i] for i in indices]
            texts += [c.text for c in greedy]
        return self._send(rows, texts)

    def _scored(self, pending: PendingScores, prompts: list[list[int]],
                responses: list[list[int]], completions: list[Completion],
                greedy: list[Completion] | None) -> Scored:
        """The responses (each one's prompt and response ids) with their rewards, waiting
        for them, and each one's greedy baseline reward."""
        rewards = torch.tensor(pending.result(), dtype=torch.float32)
        group = torch.tensor([c.prompt for c in completions], dtype=torch.long)
        baseline = torch.zeros(len(completions))
        if greedy is not None:
            baseline = rewards[len(completions):][group]
            rewards = rewards[: len(completions)]
        return Scored(prompts, responses, rewards, group, baseline,
                      [c.logprobs for c in completions])

    def _rollout_filter(self) -> tuple[str, int] | None:
        """PF-PPO's (strategy, keep) when this job filters its rollouts by reward."""
        chosen = self.algorithm.rollout_filter
        if chosen is None and self.hp.policy_filter is not None:
            chosen = (self.hp.policy_filter.strategy, self.hp.policy_filter.keep)
        return chosen

    def _filter(self, scored: Scored, step: int) -> Scored:
        chosen = self._rollout_filter()
        if chosen is None:
            return scored
        strategy, keep = chosen
        generator = torch.Generator().manual_seed(step_seed(self.ctx.seed, step, "filter"))
        kept = filter_rollouts(scored.rewards, scored.group, keep, strategy,  # type: ignore[arg-type]
                               generator)
        return scored.select(kept.tolist())

    def _statistics(self, scored: Scored, kept: Scored, batch: RolloutBatch,
                    completions: list[Completion]) -> dict[str, float]:
        rewards = scored.rewards
        lengths = torch.tensor([len(c.token_ids) for c in completions], dtype=torch.float32)
        stats = {"reward_mean": float(rewards.mean()),
                 "reward_std": float(rewards.std()) if rewards.numel() > 1 else 0.0,
                 "response_length": float(lengths.mean()),
                 "finished_fraction": sum(c.finished for c in completions) / len(completions),
                 "filtered_fraction": 1.0 - kept.rewards.numel() / rewards.numel(),
                 "uniform_group_fraction": uniform_group_fraction(rewards, scored.group),
                 "zero_reward_group_fraction": zero_reward_group_fraction(rewards,
                                                                          scored.group),
                 **advantage_statistics(batch)}
        if self.hp.beta > 0:
            stats["kl"] = float(sequence_kl(batch, self.hp.kl_estimator).mean())
        if self.hp.temperature == 1.0:  # the engine reports log p at temperature 1
            stats["engine_logprob_gap"] = engine_gap(kept, batch)
        return stats

    # -- validation and the result ---------------------------------------------------------------

    @property
    def has_validation(self) -> bool:
        return bool(self.valid_prompts)

    def validation_metrics(self) -> dict[str, float]:
        """Greedy responses to every validation prompt, scored by the job's reward."""
        assert self.ctx.validation_rows is not None
        greedy = self._greedy(self.valid_prompts)
        rewards = self._send(self.ctx.validation_rows, [c.text for c in greedy]).result()
        return {"valid_reward_mean": sum(rewards) / len(rewards),
                "valid_response_length": sum(len(c.token_ids) for c in greedy) / len(greedy)}

    def train(self) -> TrainingResult:
        try:
            metrics = self.run_steps()
        finally:
            self.sampler.close()
            self.scorer.close()
        return self.policy.save_final(self.ctx, self.state, metrics,
                                      {"algorithm": self.hp.algorithm, "reward": self.ctx.reward})


def uniform_group_fraction(rewards: Tensor, group: Tensor) -> float:
    """Fraction of prompts whose responses all got the same reward (no signal for GRPO)."""
    groups = group.unique()
    uniform = sum(bool((rewards[group == g] == rewards[group == g][0]).all()) for g in groups)
    return uniform / max(len(groups), 1)


def zero_reward_group_fraction(rewards: Tensor, group: Tensor) -> float:
    """Fraction of prompts none of whose responses scored above 0 (all wrong, for a 0/1
    grader): GRPO learns nothing from them; NGRPO's virtual sample does."""
    groups = group.unique()
    zero = sum(bool((rewards[group == g] <= 0).all()) for g in groups)
    return zero / max(len(groups), 1)


def engine_gap(kept: Scored, batch: RolloutBatch) -> float:
    """Mean |log p_engine − log π_old| over the kept responses' tokens: how far the sampler's
    numbers are from the trainer's (float noise on the torch engine; more on vLLM)."""
    engine = padded(kept.engine_logprobs, batch.mask)  # (B, T)
    return float(((engine - batch.logprobs).abs() * batch.mask).sum() / batch.mask.sum())
