"""The policy (and critic) update of one online-RL step: `update_epochs` passes over the step's
rollouts in minibatches, each one optimizer step accumulated over micro-batches.

Per token: the algorithm's policy loss (PPO's clipped surrogate; SuperHF's NLL), plus β·KL to the reference when the KL is in the loss
(GRPO's way), minus the entropy bonus, plus the clipped value loss with a critic; reduced by the
job's loss aggregation with the *minibatch's* denominators (`LossScale`), so splitting a
minibatch into micro-batches does not change its gradient.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from trainer.algorithms.policy_gradient import (
    LOSS_AGGREGATIONS,
    LossScale,
    approx_kl,
    entropy_from_log_probs,
    kl_penalty,
)
from trainer.algorithms.ppo import clipped_value_loss
from trainer.algorithms.reductions import masked_count, masked_sum
from trainer.algorithms.registry import PolicyLoss
from trainer.loop import clip_and_step
from trainer.online.batch import RolloutBatch
from trainer.online.critic import Critic
from trainer.online.experience import LogitsFn, chunks


@dataclass(frozen=True)
class UpdateSettings:
    policy_loss: PolicyLoss
    update_epochs: int
    minibatch_size: int
    micro_batch_size: int
    clip_low: float
    clip_high: float
    kl_in_loss: bool
    kl_estimator: str
    entropy_coefficient: float
    loss_aggregation: str
    max_new_tokens: int
    max_grad_norm: float
    value_coefficient: float = 0.0
    value_clip: float | None = None
    on_policy: bool = False
    """One epoch of one minibatch: the policy being updated is the one that sampled, so
    log π_old is its own forward's, detached (the experience maker skips that forward), and
    is written into the batch as it is computed."""
    rollout_is_cap: float | None = None
    """Truncated importance sampling of the sampler/trainer gap: each token's policy loss is
    weighed by min(π_old/p_sampler, cap) (the batch's `engine_logprobs`); None: not."""


@dataclass
class Tally:
    """Token-weighted sums of the update's statistics over every micro-batch it ran."""

    sums: dict[str, float] = field(default_factory=dict)
    """Per-token statistics, summed over tokens."""
    tokens: float = 0.0
    losses: dict[str, float] = field(default_factory=dict)
    """Losses, summed over minibatches (a micro-batch adds its share of its minibatch's)."""
    optimizer_steps: int = 0
    grad_norm: float = 0.0
    critic_grad_norm: float = 0.0

    def add(self, tokens: float, losses: dict[str, float], **sums: float) -> None:
        self.tokens += tokens
        for name, value in sums.items():
            self.sums[name] = self.sums.get(name, 0.0) + value
        for name, value in losses.items():
            self.losses[name] = self.losses.get(name, 0.0) + value

    def means(self) -> dict[str, float]:
        steps = max(self.optimizer_steps, 1)
        out = {name: value / max(self.tokens, 1.0) for name, value in self.sums.items()}
        out.update({name: value / steps for name, value in self.losses.items()})
        out["grad_norm"] = self.grad_norm / steps
        if self.critic_grad_norm:
            out["critic_grad_norm"] = self.critic_grad_norm / steps
        return out


@dataclass
class Opening:
    """An update begun before its rewards arrived (`PolicyUpdate.open`)."""

    order: list[int]
    """The first epoch's permutation of the batch's rows."""
    rows: list[int]
    """The first micro-batch: of the first minibatch of ``order``, by prompt (`by_prompt`)."""
    logits: Tensor
    """(b, T, V) the policy's response logits on ``rows``, with gradient."""


@dataclass
class PolicyUpdate:
    policy: LogitsFn
    """Logits of the response tokens, with gradient."""
    model: nn.Module
    optimizer: Optimizer
    scheduler: LRScheduler
    settings: UpdateSettings
    critic: Critic | None = None

    def open(self, sequences: Tensor, attention_mask: Tensor, response_length: int,
             group: list[int], generator: torch.Generator) -> Opening:
        """The first epoch's row order (drawn from ``generator`` as `run` would draw it) and
        the first micro-batch's forward, with gradient, before the rewards are in: no
        optimizer step has moved the weights yet, and only its loss needs the rewards.
        sequences, attention_mask: (B, S); ``group``: each row's prompt."""
        order = torch.randperm(len(group), generator=generator).tolist()
        first = next(self._minibatches(order, group))[: self.settings.micro_batch_size]
        index = torch.tensor(first, dtype=torch.long, device=sequences.device)
        logits = self.policy(sequences.index_select(0, index),
                             attention_mask.index_select(0, index), response_length)
        return Opening(order, first, logits)

    def run(self, batch: RolloutBatch, beta: float, generator: torch.Generator,
            opening: Opening | None = None) -> dict[str, float]:
        """Every epoch, every minibatch of a fresh order; the mean statistics. ``opening``:
        the first epoch's order and first forward, from `open` on this batch's rows."""
        tally = Tally()
        group = batch.group.tolist()
        for epoch in range(self.settings.update_epochs):
            order = (opening.order if opening is not None and epoch == 0 else
                     torch.randperm(batch.size, generator=generator).tolist())
            for rows in self._minibatches(order, group):
                self._minibatch(batch, rows, beta, tally, opening)
                opening = None
        return tally.means()

    def _minibatches(self, order: list[int], group: list[int]) -> Iterator[list[int]]:
        """The rows of each minibatch of one epoch's ``order``, by prompt (`by_prompt`)."""
        for rows in chunks(len(order), self.settings.minibatch_size):
            yield by_prompt(order[rows], group)

    def _minibatch(self, batch: RolloutBatch, rows: list[int], beta: float,
                   tally: Tally, opening: Opening | None) -> None:
        scale = LossScale.of(batch.mask[rows], self.settings.max_new_tokens)
        for part in chunks(len(rows), self.settings.micro_batch_size):
            micro = batch.select(rows[part])
            logits = None
            if opening is not None:
                assert opening.rows == rows[part], "the opening forward is of other rows"
                logits, opening = opening.logits, None
            loss, logprobs = self._loss(micro, beta, scale, tally, logits)
            loss.backward()
            if self.settings.on_policy:  # log π_old is this very forward's
                batch.logprobs[rows[part]] = logprobs.detach() * micro.mask
        tally.grad_norm += clip_and_step(self.model, self.optimizer, self.scheduler,
                                         self.settings.max_grad_norm)
        if self.critic is not None:
            tally.critic_grad_norm += self.critic.step()
        tally.optimizer_steps += 1

    def _loss(self, micro: RolloutBatch, beta: float, scale: LossScale, tally: Tally,
              logits: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """The micro-batch's share of its minibatch's loss, and its log π_θ (b, T);
        ``logits``: the policy's (b, T, V) on these rows when already computed (`open`)."""
        s, mask = self.settings, micro.mask
        response_length = mask.shape[1]
        if logits is None:
            logits = self.policy(micro.sequences, micro.attention_mask, response_length)
        # one log softmax for both the tokens' log-probs and the entropy; the entropy only
        # enters the graph when the loss uses it (else it is a metric, and keeping its
        # intermediates for a backward that never comes cost five logits-sized buffers)
        log_probs = torch.log_softmax(logits.float(), dim=-1)  # (b, T, V)
        chosen = micro.sequences[:, -response_length:].unsqueeze(-1)
        logprobs = log_probs.gather(-1, chosen).squeeze(-1)  # (b, T)
        if s.entropy_coefficient > 0:
            entropy = entropy_from_log_probs(log_probs)  # (b, T)
        else:
            with torch.no_grad():
                entropy = entropy_from_log_probs(log_probs.detach())
        del log_probs
        old_logprobs = logprobs.detach() if s.on_policy else micro.logprobs
        terms = s.policy_loss(logprobs, old_logprobs, micro.advantages, s.clip_low,
                              s.clip_high)
        per_token = terms.loss  # (b, T)
        if s.rollout_is_cap is not None:  # the sampler is not exactly π_old (vLLM's kernels)
            assert micro.engine_logprobs is not None, "the batch has no sampler log-probs"
            log_weight = torch.where(mask.bool(), old_logprobs.detach() - micro.engine_logprobs,
                                     torch.zeros_like(per_token))
            weight = log_weight.clamp(max=math.log(s.rollout_is_cap)).exp()  # (b, T)
            per_token = per_token * weight
        if s.entropy_coefficient > 0:
            per_token = per_token - s.entropy_coefficient * entropy
        kl = kl_penalty(logprobs, micro.ref_logprobs, s.kl_estimator,  # type: ignore[arg-type]
                        mask)
        if s.kl_in_loss and beta > 0:
            per_token = per_token + beta * kl
        loss = LOSS_AGGREGATIONS[s.loss_aggregation](per_token, mask, scale)
        tokens = float(masked_count(mask))
        losses = {"policy_loss": loss.item()}
        sums: dict[str, float] = {
            "clip_fraction": float(masked_sum(terms.clipped.float(), mask)),
            "approx_kl": float(approx_kl(logprobs, old_logprobs, mask)) * tokens,
            "entropy": float(masked_sum(entropy.detach(), mask)),
            "ratio": float(masked_sum(terms.ratio.detach(), mask)),
        }
        if s.rollout_is_cap is not None:
            sums["rollout_is_weight"] = float(masked_sum(weight, mask))
        if self.critic is not None:
            values = self.critic.values(micro.sequences, micro.attention_mask,
                                        response_length)
            value_loss = LOSS_AGGREGATIONS["token_mean"](
                clipped_value_loss(values, micro.values, micro.returns, s.value_clip),
                mask, scale)
            loss = loss + s.value_coefficient * value_loss
            losses["value_loss"] = value_loss.item()
        tally.add(tokens, losses, **sums)
        return loss, logprobs


def by_prompt(rows: list[int], group: list[int]) -> list[int]:
    """A minibatch's ``rows`` with the responses to one prompt together (in their drawn order
    otherwise), so that a micro-batch holds whole groups and runs each prompt once
    (`trainer.online.shared_prompt`). The minibatch's gradient does not depend on how its rows
    are split (`LossScale`)."""
    return sorted(rows, key=group.__getitem__)
