"""The tensors of one online-RL step, with a shape and a meaning on every field.

Layout: B sampled sequences. A sequence is its prompt, left-padded to P, followed by its
response, right-padded to T (S = P + T), so every response starts in column P and the
response-level tensors (B, T) line up with `sequences[:, P:]`. `mask` marks the response's
real tokens (the actions a_t); the state s_t is the prompt and the response before a_t.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch
from torch import Tensor


@dataclass
class RolloutBatch:
    sequences: Tensor  # (B, S) prompt ids left-padded to P, then response ids right-padded to T
    attention_mask: Tensor  # (B, S) 1 on real tokens, 0 on padding
    mask: Tensor  # (B, T) bool: a_t is a real response token
    logprobs: Tensor  # (B, T) log π_old(a_t|s_t): the policy that sampled (before this update)
    ref_logprobs: Tensor  # (B, T) log π_ref(a_t|s_t); zeros when no reference is needed
    values: Tensor  # (B, T) V(s_t) of the critic before the update; zeros without a critic
    rewards: Tensor  # (B,) scalar reward of each whole response (after normalisation/clipping)
    token_rewards: Tensor  # (B, T) r_t: rewards[b] at the last token, minus β·KL_t when the
    # KL penalty is in the reward (zeros elsewhere)
    group: Tensor  # (B,) long: index of the prompt the sequence answers (shared by its group)
    advantages: Tensor  # (B, T) Â_t, filled by the algorithm's estimator
    returns: Tensor  # (B, T) value targets (Â_t + V(s_t)); zeros without a critic
    baseline_rewards: Tensor  # (B,) reward of the prompt's greedy response (ReMax); zeros else
    engine_logprobs: Tensor | None = None  # (B, T) the sampler's log p(a_t|s_t) (temperature
    # 1), for the rollout correction (`rollout_is_cap`); None when nothing needs them

    @property
    def prompt_length(self) -> int:
        """P: the response of every row starts in this column of `sequences`."""
        return int(self.sequences.shape[1] - self.mask.shape[1])

    @property
    def size(self) -> int:
        return int(self.sequences.shape[0])

    def select(self, rows: Tensor | list[int]) -> RolloutBatch:
        """The rows ``rows`` (indices) of every tensor, in that order."""
        index = torch.as_tensor(rows, dtype=torch.long, device=self.sequences.device)
        return replace(self, **{f.name: getattr(self, f.name).index_select(0, index)
                                for f in fields(self) if getattr(self, f.name) is not None})
