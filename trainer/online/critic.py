"""PPO's critic: V(s_t) for the state before each response token, trained beside the policy.

A separate model with a one-output token-classification head (the value model's layout,
`modeling.heads.load_value_model`), initialised from the job's base model with a
zeroed head, or from a registered reward model named by `critic_model` (PPO-max: a critic that
starts from the reward model's features, and its head when it is a classifier). It has its own
optimizer and schedule and is saved in every checkpoint beside the policy.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from modeling.heads import load_value_model, read_head
from modeling.logprobs import left_padded_positions
from services.methods.reinforcement import PpoHyperparameters
from trainer.loop import build_optimizer, build_scheduler, clip_and_step, without_dropout

CRITIC_DIR, CRITIC_OPTIMIZER, CRITIC_SCHEDULER = "critic", "critic_optimizer.pt", "critic_scheduler.pt"


@dataclass
class Critic:
    model: Any
    optimizer: Optimizer
    scheduler: LRScheduler
    max_grad_norm: float

    @classmethod
    def load(cls, source: Path, fresh_head: bool, pad_id: int, device: torch.device,
             hp: PpoHyperparameters, total_steps: int, resume_from: Path | None) -> Critic:
        """From ``source`` (base model or reward model), or the checkpoint's own critic."""
        folder = resume_from / CRITIC_DIR if resume_from is not None else source
        model = load_value_model(folder, pad_id, device,
                                 zero_head=fresh_head and resume_from is None)
        model.train()
        if hp.disable_dropout:
            without_dropout(model)
        rate = hp.critic_learning_rate or hp.learning_rate
        optimizer = build_optimizer(model, hp.model_copy(update={"learning_rate": rate}))
        scheduler = build_scheduler(optimizer, hp, total_steps)
        if resume_from is not None:
            optimizer.load_state_dict(torch.load(resume_from / CRITIC_OPTIMIZER,
                                                 weights_only=True))
            scheduler.load_state_dict(torch.load(resume_from / CRITIC_SCHEDULER,
                                                 weights_only=True))
        return cls(model, optimizer, scheduler, hp.max_grad_norm)

    def values(self, sequences: Tensor, attention_mask: Tensor, response_length: int) -> Tensor:
        """(B, T) V(s_t): the head's output at the position before response token t."""
        out = self.model(input_ids=sequences, attention_mask=attention_mask,
                         position_ids=left_padded_positions(attention_mask), use_cache=False)
        return out.logits[:, -(response_length + 1) : -1, 0].float()  # type: ignore[no-any-return]

    def step(self) -> float:
        return clip_and_step(self.model, self.optimizer, self.scheduler, self.max_grad_norm)

    def save(self, checkpoint: Path) -> None:
        """Into a checkpoint folder that is being written."""
        self.model.save_pretrained(str(checkpoint / CRITIC_DIR))
        torch.save(self.optimizer.state_dict(), checkpoint / CRITIC_OPTIMIZER)
        torch.save(self.scheduler.state_dict(), checkpoint / CRITIC_SCHEDULER)


def critic_source(base_model_path: Path, reward_model_path: Path | None) -> tuple[Path, bool]:
    """Where the critic starts, and whether its head starts at zero: the base model's trunk
    with a new head, or the reward model's (its classifier head kept; an implicit reward
    model is a causal LM, so its trunk only)."""
    if reward_model_path is None:
        return base_model_path, True
    return reward_model_path, read_head(reward_model_path) is not None
