"""Reward-model rows → token ids, and the padded batches a sequence-classification head reads.

A scored text is prompt + response, tokenized exactly as supervised training tokenizes a
prompt and completion (`trainer.data`): ``tokenizer(prompt) + tokenizer(response) + eos``, or
a chat rendered with the tokenizer's template. Batches are right-padded, because a Llama-style
sequence-classification head reads the score at the last non-pad token.

Two kinds of data (DESIGN §3):

- preference: ``{"prompt", "chosen", "rejected"}`` or OpenAI's DPO shape
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

from trainer.data import tokenize_messages, tokenize_prompt_completion

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


def tokenize_scored(
    tokenizer: PreTrainedTokenizerBase,
    prompt: str | list[dict[str, Any]],
    response: str | list[dict[str, Any]],
    max_seq_length: int,
) -> list[int]:
    """Token ids of a prompt and response: plain strings, or chat messages for both."""
    if isinstance(prompt, str) and isinstance(response, str):
        return tokenize_prompt_completion(tokenizer, prompt, response, max_seq_length).input_ids
    if isinstance(prompt, list) and isinstance(response, list):
        return tokenize_messages(tokenizer, prompt + response, max_seq_length).input_ids
    raise ValueError("prompt and response must both be strings or both be message lists")


@dataclass(frozen=True)
class PairExample:
    chosen_ids: list[int]
    """prompt + chosen response, at most max_seq_length tokens."""
    rejected_ids: list[int]
    """prompt + rejected response."""


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
    return PairExample(
        chosen_ids=tokenize_scored(tokenizer, prompt, chosen, max_seq_length),
        rejected_ids=tokenize_scored(tokenizer, prompt, rejected, max_seq_length),
    )


def tokenize_rated(
    tokenizer: PreTrainedTokenizerBase,
    row: dict[str, Any],
    objectives: list[str],
    max_seq_length: int,
) -> RatedExample:
    scores: dict[str, float] = row["scores"]
    return RatedExample(
        input_ids=tokenize_scored(tokenizer, row["prompt"], row["response"], max_seq_length),
        scores=[float(scores.get(name, 0.0)) for name in objectives],
        rated=[name in scores for name in objectives],
    )


@dataclass
class TextBatch:
    input_ids: Tensor  # (N, T) token ids, right-padded with the pad id
    attention_mask: Tensor  # (N, T) 1 on real tokens, 0 on padding

    @property
    def num_tokens(self) -> int:
        return int(self.attention_mask.sum().item())


def pad_right(sequences: list[list[int]], pad_token_id: int, device: torch.device) -> TextBatch:
    length = max(len(ids) for ids in sequences)
    input_ids = torch.full((len(sequences), length), pad_token_id, dtype=torch.long)  # (N, T)
    attention_mask = torch.zeros((len(sequences), length), dtype=torch.long)  # (N, T)
    for row, ids in enumerate(sequences):
        input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        attention_mask[row, : len(ids)] = 1
    return TextBatch(input_ids.to(device), attention_mask.to(device))


@dataclass
class PreferenceBatch:
    texts: TextBatch  # (2B, T): the B chosen texts, then the B rejected ones
    num_pairs: int  # B


@dataclass
class RatingsBatch:
    texts: TextBatch  # (B, T) prompt + response
    targets: Tensor  # (B, K) given score per objective, 0 where unrated
    mask: Tensor  # (B, K) 1 where the row rates the objective


def collate_pairs(
    examples: list[PairExample], pad_token_id: int, device: torch.device
) -> PreferenceBatch:
    sequences = [e.chosen_ids for e in examples] + [e.rejected_ids for e in examples]
    return PreferenceBatch(pad_right(sequences, pad_token_id, device), len(examples))


def collate_rated(
    examples: list[RatedExample], pad_token_id: int, device: torch.device
) -> RatingsBatch:
    texts = pad_right([e.input_ids for e in examples], pad_token_id, device)
    targets = torch.tensor([e.scores for e in examples], dtype=torch.float32)  # (B, K)
    mask = torch.tensor([e.rated for e in examples], dtype=torch.bool)  # (B, K)
    return RatingsBatch(texts, targets.to(device), mask.to(device))
