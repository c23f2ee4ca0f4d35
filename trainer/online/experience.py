"""From sampled and scored responses to a `RolloutBatch`: padding, then the no-grad forward
passes of the policy (log π_old), the reference (log π_ref) and the critic (V), the KL shaping
of the rewards, and the algorithm's advantages.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from modeling.logprobs import gather_logprobs
from trainer.algorithms.policy_gradient import kl_penalty
from trainer.algorithms.reductions import masked_mean, masked_whiten
from trainer.algorithms.registry import AdvantageOptions, Algorithm
from trainer.online.batch import RolloutBatch
from trainer.online.scoring import shape_rewards

LogitsFn = Callable[[Tensor, Tensor, int], Tensor]
"""(sequences (B, S), attention_mask (B, S), T) → (B, T, V) logits of the response tokens."""
ValuesFn = Callable[[Tensor, Tensor, int], Tensor]
"""(sequences (B, S), attention_mask (B, S), T) → (B, T) V(s_t) before each response token."""


@dataclass
class Scored:
    """One step's responses as sampled and scored, in sequence order."""

    prompts: list[list[int]]
    """Each sequence's prompt ids (repeated for the samples of one prompt)."""
    responses: list[list[int]]
    """Each sequence's sampled ids (never empty)."""
    rewards: Tensor  # (B,) the reward service's scores (raw)
    group: Tensor  # (B,) long: the prompt each sequence answers
    baseline_rewards: Tensor  # (B,) reward of the prompt's greedy response; zeros if unused
    engine_logprobs: list[list[float]]
    """The sampler's log p of each response token (temperature 1)."""

    def select(self, rows: list[int]) -> Scored:
        index = torch.tensor(rows, dtype=torch.long)
        return Scored([self.prompts[i] for i in rows], [self.responses[i] for i in rows],
                      self.rewards[index], self.group[index], self.baseline_rewards[index],
                      [self.engine_logprobs[i] for i in rows])


@dataclass
class Prepared:
    """A step's responses padded, with the forwards that do not need their rewards; the
    fields are `RolloutBatch`'s of the same names."""

    sequences: Tensor  # (B, S)
    attention_mask: Tensor  # (B, S)
    mask: Tensor  # (B, T) bool
    logprobs: Tensor  # (B, T) log π_old; zeros when the update's own forward gives them
    ref_logprobs: Tensor  # (B, T) log π_ref; zeros without a reference
    values: Tensor  # (B, T) V(s_t); zeros without a critic
    dense: Tensor | None  # (B, T) RTO's log π_dpo; None for the other algorithms


def pack(prompts: list[list[int]], responses: list[list[int]], pad_id: int,
         device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """sequences (B, S), attention_mask (B, S) and response mask (B, T): each prompt
    left-padded to P = the longest prompt, each response right-padded to T."""
    prompt_length = max(len(p) for p in prompts)
    response_length = max(len(r) for r in responses)
    batch = len(prompts)
    sequences = torch.full((batch, prompt_length + response_length), pad_id, dtype=torch.long)
    attention_mask = torch.zeros_like(sequences)  # (B, S)
    mask = torch.zeros((batch, response_length), dtype=torch.bool)  # (B, T)
    for row, (prompt, response) in enumerate(zip(prompts, responses, strict=True)):
        start = prompt_length - len(prompt)
        sequences[row, start:prompt_length] = torch.tensor(prompt)
        sequences[row, prompt_length : prompt_length + len(response)] = torch.tensor(response)
        attention_mask[row, start : prompt_length + len(response)] = 1
        mask[row, : len(response)] = True
    return sequences.to(device), attention_mask.to(device), mask.to(device)


def chunks(size: int, chunk_size: int) -> list[slice]:
    return [slice(start, min(start + chunk_size, size)) for start in range(0, size, chunk_size)]


@dataclass
class ExperienceMaker:
    policy: LogitsFn
    reference: LogitsFn | None
    """None: no reference forward (no KL term), ref_logprobs stay zeros."""
    critic: ValuesFn | None
    algorithm: Algorithm
    options: AdvantageOptions
    kl_estimator: str
    kl_in_reward: bool
    whiten_advantages: bool
    micro_batch_size: int
    pad_id: int
    device: torch.device
    dense: LogitsFn | None = None
    """RTO: a DPO-trained model whose token log-ratio to the reference is a dense reward."""
    dense_coefficient: float = 0.0
    """β₁ of RTO."""
    reward_scale: float = 1.0
    """β₃ of RTO: the sentence reward's weight."""
    on_policy: bool = False
    """The update's own forward gives log π_old (`UpdateSettings.on_policy`): skip this one
    and leave `logprobs` zero for it to fill."""

    def make(self, scored: Scored, rewards: Tensor, beta: float) -> RolloutBatch:
        """The batch of ``scored``, whose rewards (B,) after normalisation are ``rewards``."""
        return self.finish(self.prepare(scored.prompts, scored.responses), rewards, beta,
                           scored.group, scored.baseline_rewards, scored.engine_logprobs)

    @torch.no_grad()
    def prepare(self, prompts: list[list[int]], responses: list[list[int]]) -> Prepared:
        """Everything of the batch that the rewards do not change: the padded sequences and
        the no-grad forwards. It can run while the reward service scores the responses."""
        sequences, attention_mask, mask = pack(prompts, responses, self.pad_id, self.device)
        zeros = torch.zeros(mask.shape, dtype=torch.float32, device=mask.device)  # (B, T)
        logprobs = (zeros.clone() if self.on_policy else
                    self._per_token(self.policy, sequences, attention_mask, mask, logits=True))
        ref_logprobs = (zeros if self.reference is None else
                        self._per_token(self.reference, sequences, attention_mask, mask, True))
        values = (zeros if self.critic is None else
                  self._per_token(self.critic, sequences, attention_mask, mask, logits=False))
        dense = (None if self.dense is None else
                 self._per_token(self.dense, sequences, attention_mask, mask, logits=True))
        return Prepared(sequences, attention_mask, mask, logprobs, ref_logprobs, values, dense)

    @torch.no_grad()
    def finish(self, prepared: Prepared, rewards: Tensor, beta: float, group: Tensor,
               baseline_rewards: Tensor,
               engine_logprobs: list[list[float]] | None = None) -> RolloutBatch:
        """The batch of ``prepared`` with its (B,) rewards after normalisation, each row's
        prompt index ``group`` (B,), ReMax's greedy rewards (B,) and the sampler's
        log-probabilities of each response's tokens (kept when the update corrects for the
        sampler): the KL shaping and the algorithm's advantages."""
        p = prepared
        kl = (kl_penalty(p.logprobs, p.ref_logprobs, self.kl_estimator,  # type: ignore[arg-type]
                          p.mask)
              if self.kl_in_reward and self.reference is not None else None)
        rewards = rewards.to(self.device) * self.reward_scale
        token_rewards = shape_rewards(rewards, p.mask, kl, beta)  # (B, T)
        if p.dense is not None:  # RTO: β₁·log(π_dpo/π_ref)(a_t|s_t) on every token
            token_rewards += self.dense_coefficient * (p.dense - p.ref_logprobs) * p.mask
        zeros = torch.zeros(p.mask.shape, dtype=torch.float32, device=p.mask.device)  # (B, T)
        batch = RolloutBatch(
            sequences=p.sequences, attention_mask=p.attention_mask, mask=p.mask,
            logprobs=p.logprobs, ref_logprobs=p.ref_logprobs, values=p.values,
            rewards=rewards, token_rewards=token_rewards, group=group.to(self.device),
            advantages=zeros, returns=zeros, baseline_rewards=baseline_rewards.to(self.device),
            engine_logprobs=(None if engine_logprobs is None else
                             padded(engine_logprobs, p.mask)))
        batch.advantages, batch.returns = self.algorithm.advantages(batch, self.options)
        if self.whiten_advantages:
            batch.advantages = masked_whiten(batch.advantages, p.mask) * p.mask
        return batch

    def _per_token(self, forward: Callable[[Tensor, Tensor, int], Tensor], sequences: Tensor,
                   attention_mask: Tensor, mask: Tensor, logits: bool) -> Tensor:
        """(B, T) log-probabilities of the response tokens (``logits``: ``forward`` gives
        logits) or values, micro-batch by micro-batch; zeros on padding."""
        response_length = mask.shape[1]
        parts = []
        for rows in chunks(sequences.shape[0], self.micro_batch_size):
            out = forward(sequences[rows], attention_mask[rows], response_length)
            if logits:
                out = gather_logprobs(out, sequences[rows, -response_length:])  # (b, T)
            parts.append(out.float())
        return torch.cat(parts) * mask


def padded(rows: list[list[float]], mask: Tensor) -> Tensor:
    """(B, T) of ``rows`` (one list per response, as long as its real tokens), zeros after."""
    out = torch.zeros(mask.shape, dtype=torch.float32, device=mask.device)
    for row, values in enumerate(rows):
        out[row, : len(values)] = torch.tensor(values, dtype=torch.float32)
    return out


def sequence_kl(batch: RolloutBatch, estimator: str) -> Tensor:
    """(B,) Σ_t KL_t of each response against the reference (the k-estimator's sum)."""
    kl = kl_penalty(batch.logprobs, batch.ref_logprobs, estimator,  # type: ignore[arg-type]
                    batch.mask)
    return (kl * batch.mask).sum(-1)


def advantage_statistics(batch: RolloutBatch) -> dict[str, float]:
    mean = masked_mean(batch.advantages, batch.mask)
    std = masked_mean((batch.advantages - mean) ** 2, batch.mask).sqrt()
    return {"advantage_mean": float(mean), "advantage_std": float(std)}
