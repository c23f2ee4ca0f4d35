"""Value-model training data: prompt rows → prompt ids, scored rollouts, and padded batches.

A rollout is one sampled completion of a prompt with its reward. Rollouts are made once per
job and written to `rollouts.json` in the job's checkpoint folder before the first step, so a
resumed job (or one restarted before its first checkpoint) trains on the very same data
without sampling or scoring again.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor

ROLLOUTS_FILE = "rollouts.json"


@dataclass(frozen=True)
class Rollout:
    row: int
    """Index of the prompt row it completes."""
    prompt_ids: list[int]
    completion_ids: list[int]
    """Sampled ids, through the stop token when one was sampled; never empty."""
    text: str
    """The completion as the reward saw it."""
    reward: float


@dataclass
class ValueBatch:
    input_ids: Tensor  # (B, T) prompt + completion ids, right-padded
    attention_mask: Tensor  # (B, T) 1 on real tokens
    value_mask: Tensor  # (B, T) bool: states trained, the prompt's last token .. the last token
    rewards: Tensor  # (B,) R of each completion

    @property
    def num_tokens(self) -> int:
        return int(self.attention_mask.sum().item())


def collate_values(rollouts: list[Rollout], pad_id: int, device: torch.device) -> ValueBatch:
    """Right-pad prompt + completion; the value mask spans the prompt's last token (V before
    sampling) through the completion's last (V of the finished text, trained towards R)."""
    length = max(len(r.prompt_ids) + len(r.completion_ids) for r in rollouts)
    input_ids = torch.full((len(rollouts), length), pad_id, dtype=torch.long)  # (B, T)
    attention_mask = torch.zeros((len(rollouts), length), dtype=torch.long)  # (B, T)
    value_mask = torch.zeros((len(rollouts), length), dtype=torch.bool)  # (B, T)
    for row, rollout in enumerate(rollouts):
        ids = rollout.prompt_ids + rollout.completion_ids
        input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        attention_mask[row, : len(ids)] = 1
        value_mask[row, len(rollout.prompt_ids) - 1 : len(ids)] = True
    rewards = torch.tensor([r.reward for r in rollouts], dtype=torch.float32)  # (B,)
    return ValueBatch(input_ids.to(device), attention_mask.to(device), value_mask.to(device),
                      rewards.to(device))


def save_rollouts(path: Path, splits: dict[str, list[Rollout]]) -> None:
    """Write {split: [rollout, ...]} atomically (a scratch file renamed into place)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".tmp")
    partial.write_text(json.dumps({name: [asdict(r) for r in rollouts]
                                   for name, rollouts in splits.items()}))
    os.replace(partial, path)


def load_rollouts(path: Path) -> dict[str, list[Rollout]]:
    return {name: [Rollout(**r) for r in rollouts]
            for name, rollouts in json.loads(path.read_text()).items()}
