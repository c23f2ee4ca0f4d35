"""What each kind of reward data trains: how rows are tokenized, scored and turned into a loss.

`OBJECTIVES` maps the data kind (`trainer.reward_data.data_kind`) to its objective:
preference pairs → Bradley-Terry on a scalar head; ratings → masked regression, one head per
objective. Both report their loss and statistics through `statistics`, used for training steps
and validation alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from services.methods import RewardModelHyperparameters
from trainer.algorithms.reward import (
    REWARD_LOSSES,
    center_rewards_loss,
    mean_margin,
    pairwise_accuracy,
    per_objective_correlation,
    per_objective_mse,
)
from trainer.reward_data import (
    PairExample,
    RatedExample,
    collate_pairs,
    collate_rated,
    tokenize_pair,
    tokenize_rated,
)


@dataclass
class PairRewards:
    chosen: Tensor  # (B,) r(x, y_chosen)
    rejected: Tensor  # (B,) r(x, y_rejected)


@dataclass
class ObjectiveScores:
    pred: Tensor  # (B, K) predicted score per objective
    target: Tensor  # (B, K) given score, 0 where unrated
    mask: Tensor  # (B, K) 1 where the row rates the objective


class RewardObjective(Protocol):
    """How one kind of data is tokenized, scored by the model, and turned into a loss."""

    objectives: list[str]

    def tokenize(self, tokenizer: Any, row: dict[str, Any], max_len: int) -> Any: ...
    def forward(self, model: nn.Module, examples: list[Any]) -> Any: ...
    def weight(self, examples: list[Any]) -> float: ...
    def tokens(self, examples: list[Any]) -> int: ...
    def loss(self, outputs: Any) -> Tensor: ...
    def concat(self, outputs: list[Any]) -> Any: ...
    def statistics(self, outputs: Any) -> dict[str, float]: ...


@dataclass
class PreferenceObjective:
    """Bradley-Terry on (chosen, rejected) pairs, plus the optional centring loss."""

    hp: RewardModelHyperparameters
    pad_id: int
    device: torch.device
    objectives: list[str]

    def tokenize(self, tokenizer: Any, row: dict[str, Any], max_len: int) -> PairExample:
        return tokenize_pair(tokenizer, row, max_len)

    def forward(self, model: nn.Module, examples: list[PairExample]) -> PairRewards:
        batch = collate_pairs(examples, self.pad_id, self.device)
        texts = batch.texts
        rewards = model(input_ids=texts.input_ids, attention_mask=texts.attention_mask).logits
        rewards = rewards[:, 0]  # (2B,)
        return PairRewards(rewards[: batch.num_pairs], rewards[batch.num_pairs :])

    def weight(self, examples: list[PairExample]) -> float:
        return float(len(examples))

    def tokens(self, examples: list[PairExample]) -> int:
        return sum(len(e.chosen_ids) + len(e.rejected_ids) for e in examples)

    def loss(self, outputs: PairRewards) -> Tensor:
        loss = REWARD_LOSSES["preference"](outputs.chosen, outputs.rejected, self.hp.margin)
        if self.hp.center_rewards_coefficient:
            loss = loss + self.hp.center_rewards_coefficient * center_rewards_loss(
                outputs.chosen, outputs.rejected
            )
        return loss

    def concat(self, outputs: list[PairRewards]) -> PairRewards:
        return PairRewards(torch.cat([o.chosen for o in outputs]),
                           torch.cat([o.rejected for o in outputs]))

    def statistics(self, outputs: PairRewards) -> dict[str, float]:
        return {
            "loss": self.loss(outputs).item(),
            "pairwise_accuracy": pairwise_accuracy(outputs.chosen, outputs.rejected).item(),
            "mean_margin": mean_margin(outputs.chosen, outputs.rejected).item(),
        }


@dataclass
class RatingsObjective:
    """Masked mean-squared error of one head per objective."""

    hp: RewardModelHyperparameters
    pad_id: int
    device: torch.device
    objectives: list[str]

    def tokenize(self, tokenizer: Any, row: dict[str, Any], max_len: int) -> RatedExample:
        return tokenize_rated(tokenizer, row, self.objectives, max_len)

    def forward(self, model: nn.Module, examples: list[RatedExample]) -> ObjectiveScores:
        batch = collate_rated(examples, self.pad_id, self.device)
        texts = batch.texts
        pred = model(input_ids=texts.input_ids, attention_mask=texts.attention_mask).logits
        return ObjectiveScores(pred, batch.targets, batch.mask)  # (B, K) each

    def weight(self, examples: list[RatedExample]) -> float:
        return float(sum(sum(e.rated) for e in examples))

    def tokens(self, examples: list[RatedExample]) -> int:
        return sum(len(e.input_ids) for e in examples)

    def loss(self, outputs: ObjectiveScores) -> Tensor:
        return REWARD_LOSSES["ratings"](outputs.pred, outputs.target, outputs.mask)

    def concat(self, outputs: list[ObjectiveScores]) -> ObjectiveScores:
        return ObjectiveScores(*(torch.cat([getattr(o, f) for o in outputs])
                                 for f in ("pred", "target", "mask")))

    def statistics(self, outputs: ObjectiveScores) -> dict[str, float]:
        values = {"loss": self.loss(outputs).item()}
        mse = per_objective_mse(outputs.pred, outputs.target, outputs.mask)  # (K,)
        corr = per_objective_correlation(outputs.pred, outputs.target, outputs.mask)  # (K,)
        for index, name in enumerate(self.objectives):
            values[f"mse_{name}"] = mse[index].item()
            values[f"corr_{name}"] = corr[index].item()
        return values


OBJECTIVES: dict[str, type[PreferenceObjective | RatingsObjective]] = {
    "preference": PreferenceObjective,
    "ratings": RatingsObjective,
}


def detach(outputs: Any) -> Any:
    return type(outputs)(*(t.detach() for t in vars(outputs).values()))
