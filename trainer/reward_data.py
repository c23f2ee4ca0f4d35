"""Reward-model rows → token ids, and the padded batches a sequence-classification head reads.

A scored text is prompt + response, tokenized exactly as supervised training tokenizes a
prompt and completion (`trainer.data`): ``tokenizer(prompt) + tokenizer(response) + eos``, or
a chat rendered with the tokenizer's template. The response is the last run of tokens
supervised training would train on (`split_scored`): the completion and its eos, or the last
assistant turn and its end-of-turn marker; the reward service splits items the same way.
Batches are right-padded, because a Llama-style sequence-classification head reads the score
at the last non-pad token; the implicit head sums log-probabilities over the response tokens
(`response_labels`).

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

from trainer.algorithms.sft import IGNORE_INDEX
from trainer.data import TokenizedExample, tokenize_messages, tokenize_prompt_completion

UNLIMITED = 1 << 30

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


def split_scored(
    tokenizer: PreTrainedTokenizerBase,
    prompt: str | list[dict[str, Any]],
    response: str | list[dict[str, Any]],
) -> tuple[list[int], list[int]]:
    """(prompt ids, response ids), untruncated: plain strings, or chat messages for both."""
    example = _tokenize_whole(tokenizer, prompt, response)
    start = response_start(example.labels)
    return example.input_ids[:start], example.input_ids[start:]


def _tokenize_whole(
    tokenizer: PreTrainedTokenizerBase,
    prompt: str | list[dict[str, Any]],
    response: str | list[dict[str, Any]],
) -> TokenizedExample:
    if isinstance(prompt, str) and isinstance(response, str):
        return tokenize_prompt_completion(tokenizer, prompt, response, UNLIMITED)
    if isinstance(prompt, list) and isinstance(response, list):
        return tokenize_messages(tokenizer, prompt + response, UNLIMITED)
    raise ValueError("prompt and response must both be strings or both be message lists")


def response_start(labels: list[int]) -> int:
    """Where the last run of trained (non-ignored) labels starts: the response."""
    end = len(labels)
    while end > 0 and labels[end - 1] == IGNORE_INDEX:
        end -= 1
    start = end
    while start > 0 and labels[start - 1] != IGNORE_INDEX:
        start -= 1
    return start


def tokenize_scored(
    tokenizer: PreTrainedTokenizerBase,
    prompt: str | list[dict[str, Any]],
    response: str | list[dict[str, Any]],
    max_seq_length: int,
) -> tuple[list[int], int]:
    """Token ids of prompt + response (its first max_seq_length), and where the response starts
    in them (their length when the prompt alone fills them)."""
    prompt_ids, response_ids = split_scored(tokenizer, prompt, response)
    input_ids = (prompt_ids + response_ids)[:max_seq_length]
    return input_ids, min(len(prompt_ids), len(input_ids))


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
    chosen_ids, chosen_start = tokenize_scored(tokenizer, prompt, chosen, max_seq_length)
    rejected_ids, rejected_start = tokenize_scored(tokenizer, prompt, rejected, max_seq_length)
    return PairExample(chosen_ids, rejected_ids, chosen_start, rejected_start)


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


def response_labels(texts: TextBatch, starts: list[int]) -> Tensor:
    """(N, T) the token id on each row's response tokens (from its start on), IGNORE_INDEX on
    its prompt and padding: what `trainer.algorithms.reward.response_logps` sums over."""
    positions = torch.arange(texts.input_ids.shape[1], device=texts.input_ids.device)  # (T,)
    first = torch.tensor(starts, device=texts.input_ids.device).unsqueeze(1)  # (N, 1)
    in_response = (positions.unsqueeze(0) >= first) & texts.attention_mask.bool()  # (N, T)
    return torch.where(in_response, texts.input_ids, IGNORE_INDEX)


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
