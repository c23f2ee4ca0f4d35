"""What each head and kind of reward data trains: the model, how rows are tokenized and scored,
and the loss.

`OBJECTIVES` maps (head, data kind) (`trainer.reward_data.data_kind`) to its objective:
classifier head: preference pairs → Bradley-Terry on a scalar head; ratings → masked
regression, one head per objective. Implicit head: preference pairs → Bradley-Terry on
β·Σ log π(y|x) (minus the reference's) plus NLL of the chosen responses. Each reports its loss
and statistics through `statistics`, used for training steps and validation alike.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor, nn
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    PreTrainedModel,
)

from modeling.logprobs import response_logps, response_token_counts
from services.methods import RewardModelHyperparameters
from trainer.algorithms.preference import (
    PREFERENCE_LOSSES,
    PairLogRatios,
    PreferenceOptions,
)
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


@dataclass
class ImplicitPairRewards(PairRewards):
    chosen_nll: Tensor  # (B,) −Σ log π(y_c|x) / |y_c|, the chosen response's per-token NLL


class RewardObjective(Protocol):
    """How one kind of data is tokenized, scored by the model, and turned into a loss."""

    objectives: list[str]

    def load_model(self, source: Path) -> PreTrainedModel: ...
    def tokenize(self, tokenizer: Any, row: dict[str, Any], max_len: int) -> Any: ...
    def forward(self, model: nn.Module, examples: list[Any]) -> Any: ...
    def weight(self, examples: list[Any]) -> float: ...
    def tokens(self, examples: list[Any]) -> int: ...
    def loss(self, outputs: Any) -> Tensor: ...
    def concat(self, outputs: list[Any]) -> Any: ...
    def statistics(self, outputs: Any) -> dict[str, float]: ...


def load_classifier(source: Path, objectives: list[str], pad_id: int,
                    device: torch.device) -> PreTrainedModel:
    """A sequence-classification model with one head per objective, in float32.

    From a base causal LM the score head is new (randomly initialised from the current seed);
    from a checkpoint it is loaded. pad_token_id must be set: the head pools the last non-pad
    token of each right-padded row.
    """
    return AutoModelForSequenceClassification.from_pretrained(
        source,
        num_labels=len(objectives),
        id2label=dict(enumerate(objectives)),
        label2id={name: index for index, name in enumerate(objectives)},
        pad_token_id=pad_id,
        dtype=torch.float32,
        device_map=device,
    )


def load_causal_lm(source: Path, device: torch.device) -> PreTrainedModel:
    """The causal LM at `source` (the base model or a checkpoint's), in float32."""
    return AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32, device_map=device)


@dataclass
class PreferenceObjective:
    """Bradley-Terry on (chosen, rejected) pairs, plus the optional centring loss."""

    hp: RewardModelHyperparameters
    pad_id: int
    device: torch.device
    objectives: list[str]
    base_model: Path
    """The job's starting model (the implicit head's reference)."""

    def load_model(self, source: Path) -> PreTrainedModel:
        return load_classifier(source, self.objectives, self.pad_id, self.device)

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
class ImplicitPreferenceObjective(PreferenceObjective):
    """Bradley-Terry on r = β·(Σ log π(y|x) − Σ log π_ref(y|x)) over response tokens, plus
    `sft_coefficient` times the chosen responses' per-token NLL. The model is the causal LM
    itself; the reference, when `hp.reference` is "base", is the frozen starting model."""

    reference: PreTrainedModel | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        if self.hp.reference == "base":
            self.reference = load_causal_lm(self.base_model, self.device).eval()
            self.reference.requires_grad_(False)

    def load_model(self, source: Path) -> PreTrainedModel:
        return load_causal_lm(source, self.device)

    def forward(self, model: nn.Module, examples: list[PairExample]) -> ImplicitPairRewards:
        batch = collate_pairs(examples, self.pad_id, self.device)
        texts, labels = batch.texts, batch.labels  # (2B, T) each
        logps = self._logps(model, texts.input_ids, texts.attention_mask, labels)  # (2B,)
        rewards = logps
        if self.reference is not None:
            with torch.no_grad():
                reference_logps = self._logps(self.reference, texts.input_ids,
                                              texts.attention_mask, labels)  # (2B,)
            rewards = logps - reference_logps
        assert self.hp.beta is not None
        rewards = self.hp.beta * rewards  # (2B,)
        nll = -logps / response_token_counts(labels).clamp(min=1.0)  # (2B,)
        pairs = batch.num_pairs
        return ImplicitPairRewards(rewards[:pairs], rewards[pairs:], nll[:pairs])

    @staticmethod
    def _logps(model: nn.Module, input_ids: Tensor, attention_mask: Tensor,
               labels: Tensor) -> Tensor:
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits  # (N, T, V)
        return response_logps(logits, labels)  # (N,)

    def loss(self, outputs: PairRewards) -> Tensor:
        """Bradley-Terry plus the chosen responses' NLL, as in Iterative RPO (Pang et al. 2024,
        eq. 1): without it likelihood can fall on both responses while their gap widens."""
        assert isinstance(outputs, ImplicitPairRewards) and self.hp.sft_coefficient is not None
        # The rewards are β·h already: DPO's sigmoid loss with β = 1 (one DPO in the codebase).
        pairs = PairLogRatios(outputs.chosen, outputs.rejected)
        loss = PREFERENCE_LOSSES["sigmoid"](
            pairs, PreferenceOptions(beta=1.0, offset=self.hp.margin or 0.0)).mean()
        return loss + self.hp.sft_coefficient * outputs.chosen_nll.mean()

    def concat(self, outputs: list[PairRewards]) -> ImplicitPairRewards:
        return ImplicitPairRewards(*(torch.cat([getattr(o, f) for o in outputs])
                                     for f in ("chosen", "rejected", "chosen_nll")))

    def statistics(self, outputs: PairRewards) -> dict[str, float]:
        assert isinstance(outputs, ImplicitPairRewards)
        return {**super().statistics(outputs), "chosen_nll": outputs.chosen_nll.mean().item()}


@dataclass
class RatingsObjective:
    """Masked mean-squared error of one head per objective."""

    hp: RewardModelHyperparameters
    pad_id: int
    device: torch.device
    objectives: list[str]
    base_model: Path

    def load_model(self, source: Path) -> PreTrainedModel:
        return load_classifier(source, self.objectives, self.pad_id, self.device)

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


OBJECTIVES: dict[tuple[str, str], type[PreferenceObjective | RatingsObjective]] = {
    ("classifier", "preference"): PreferenceObjective,
    ("classifier", "ratings"): RatingsObjective,
    ("implicit", "preference"): ImplicitPreferenceObjective,
}
"""The objective of each (head, data kind); the implicit head reads one scalar, so no ratings."""


def detach(outputs: Any) -> Any:
    return type(outputs)(*(t.detach() for t in vars(outputs).values()))
