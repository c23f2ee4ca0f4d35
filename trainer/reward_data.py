"""Reward-model rows → token ids, and the padded batches a sequence-classification head reads.

A scored text is prompt + response, tokenized exactly as supervised training tokenizes a
prompt and completion (`modeling.sequences`): ``tokenizer(prompt) + tokenizer(response) + eos``, or
a chat rendered with the tokenizer's template. The response is the last run of tokens
supervised training would train on (`split_scored`): the completion and its eos, or the last
assistant turn and its end-of-turn marker; the reward service splits items the same way.
Batches are right-padded, because a Llama-style sequence-classification head reads the score
at the last non-pad token; the implicit head sums log-probabilities over the response tokens
(`response_labels`).

Two kinds of data (DESIGN §3):

- preference: ``{"prompt", "chosen", "rejected"}``, as strings or (TRL's conversational
  shape) message lists, or OpenAI's DPO shape
  ``{"input": {"messages"}, "preferred_output", "non_preferred_output"}`` → `PairExample`;
- ratings: ``{"prompt", "response", "scores": {name: float}}`` → `RatedExample`, one target
  per objective (sorted names), masked where a row does not rate an objective.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from transformers import PreTrainedTokenizerBase

from modeling.sequences import (
    TextBatch,
    pad_right,
    response_labels,
    split_scored,
    tokenize_scored,
)

PREFERENCE_OBJECTIVES = ["reward"]
"""A preference-trained model has one head: the scalar reward."""


def data_kind(rows: list[dict[str, Any]]) -> str:
    """"preference" or "ratings": the one kind every row is; ValueError otherwise."""
    kinds = {_row_kind(row) for row in rows}
    if len(kinds) != 1:
        found = ", ".join(sorted(kinds)) or "no rows"
        raise ValueError(f"a reward_model job needs rows of one kind, preference or ratings; "
                         f"got {found}")
    (kind,) = kinds
    if kind == "other":
        raise ValueError('reward_model rows must be preference ({"prompt", "chosen", '
                         '"rejected"} or OpenAI\'s DPO shape) or ratings ({"prompt", '
                         '"response", "scores"})')
    return kind


def _row_kind(row: dict[str, Any]) -> str:
    if "scores" in row:
        return "ratings"
    if "chosen" in row or "preferred_output" in row:
        return "preference"
    return "other"


def rating_objectives(rows: list[dict[str, Any]]) -> list[str]:
    """Every objective any ratings row scores, sorted: the order of the model's heads."""
    return sorted({name for row in rows for name in row["scores"]})


@dataclass(frozen=True)
class PairExample:
    chosen_ids: list[int]
    """prompt + chosen response, at most max_seq_length tokens."""
    rejected_ids: list[int]
    """prompt + rejected response."""
    chosen_start: int
    """Index of the chosen response's first token in chosen_ids."""
    rejected_start: int
    """Index of the rejected response's first token in rejected_ids."""
    cut: bool = False
    """Either text was longer than max_seq_length and lost its end."""


@dataclass(frozen=True)
class RatedExample:
    input_ids: list[int]
    """prompt + response, at most max_seq_length tokens."""
    scores: list[float]
    """One target per objective (0.0 where the row does not rate it)."""
    rated: list[bool]
    """Whether the row rates each objective."""


def tokenize_pair(
    tokenizer: PreTrainedTokenizerBase, row: dict[str, Any], max_seq_length: int
) -> PairExample:
    if "chosen" in row:
        prompt, chosen, rejected = row["prompt"], row["chosen"], row["rejected"]
    else:
        prompt = row["input"]["messages"]
        chosen, rejected = row["preferred_output"], row["non_preferred_output"]
    chosen_prompt, chosen_ids = split_scored(tokenizer, prompt, chosen)
    rejected_prompt, rejected_ids = split_scored(tokenizer, prompt, rejected)
    chosen_text, rejected_text = chosen_prompt + chosen_ids, rejected_prompt + rejected_ids
    return PairExample(  # as tokenize_scored cuts, each text tokenized once
        chosen_text[:max_seq_length], rejected_text[:max_seq_length],
        min(len(chosen_prompt), max_seq_length), min(len(rejected_prompt), max_seq_length),
        cut=max(len(chosen_text), len(rejected_text)) > max_seq_length)


def tokenize_rated(
    tokenizer: PreTrainedTokenizerBase,
    row: dict[str, Any],
    objectives: list[str],
    max_seq_length: int,
) -> RatedExample:
    scores: dict[str, float] = row["scores"]
    input_ids, _ = tokenize_scored(tokenizer, row["prompt"], row["response"], max_seq_length)
    return RatedExample(
        input_ids=input_ids,
        scores=[float(scores.get(name, 0.0)) for name in objectives],
        rated=[name in scores for name in objectives],
    )


@dataclass
class PreferenceBatch:
    texts: TextBatch  # (2B, T): the B chosen texts, then the B rejected ones
    num_pairs: int  # B
    starts: list[int]  # 2B: where each text's response starts, in the order of texts

    @property
    def labels(self) -> Tensor:
        """(2B, T) response token ids, IGNORE_INDEX elsewhere (`response_labels`)."""
        return response_labels(self.texts, self.starts)


@dataclass
class RatingsBatch:
    texts: TextBatch  # (B, T) prompt + response
    targets: Tensor  # (B, K) given score per objective, 0 where unrated
    mask: Tensor  # (B, K) 1 where the row rates the objective


def collate_pairs(
    examples: list[PairExample], pad_token_id: int, device: torch.device
) -> PreferenceBatch:
    sequences = [e.chosen_ids for e in examples] + [e.rejected_ids for e in examples]
    starts = [e.chosen_start for e in examples] + [e.rejected_start for e in examples]
    return PreferenceBatch(pad_right(sequences, pad_token_id, device), len(examples), starts)


def collate_rated(
    examples: list[RatedExample], pad_token_id: int, device: torch.device
) -> RatingsBatch:
    texts = pad_right([e.input_ids for e in examples], pad_token_id, device)
    targets = torch.tensor([e.scores for e in examples], dtype=torch.float32)  # (B, K)
    mask = torch.tensor([e.rated for e in examples], dtype=torch.bool)  # (B, K)
    return RatingsBatch(texts, targets.to(device), mask.to(device))
