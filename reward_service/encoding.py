"""Items → token ids, as the reward model trainer lays them out, and the truncation policy.

Layout (the one `trainer.data` uses for supervised rows, so a reward model sees at scoring what
it saw in training):

- `{"prompt", "response"}`: tokenizer(prompt) (with its special tokens, e.g. `<bos>`) +
  tokenizer(response, no special tokens) + `<eos>`;
- `{"messages"}`: the chat rendered with the tokenizer's template; the response is the last
  assistant turn (its end-of-turn marker included), the prompt everything before it.

Truncation, when prompt + response is longer than the limit: the score is read at the last
token, so the response's start must survive, and the prompt's end is the context closest to
it. The response keeps at most limit - min(len(prompt), limit // 2) tokens from its start and
the prompt keeps its last tokens in what remains (its leading `<bos>`, if any, is kept). An
item that was cut is reported with `truncated: true`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from transformers import PreTrainedTokenizerBase

from reward_service.protocol import ScoreItem
from trainer.algorithms.sft import IGNORE_INDEX
from trainer.data import tokenize_messages, tokenize_prompt_completion

UNLIMITED = 1 << 30


@dataclass(frozen=True)
class EncodedItem:
    input_ids: list[int]
    truncated: bool


def split_item(tokenizer: PreTrainedTokenizerBase, item: ScoreItem) -> tuple[list[int], list[int]]:
    """(prompt ids, response ids) of an item, untruncated."""
    if item.messages is not None:
        messages: list[dict[str, Any]] = [m.model_dump() for m in item.messages]
        example = tokenize_messages(tokenizer, messages, UNLIMITED)
    else:
        example = tokenize_prompt_completion(tokenizer, str(item.prompt), str(item.response),
                                             UNLIMITED)
    start = _last_trained_run_start(example.labels)
    return example.input_ids[:start], example.input_ids[start:]


def _last_trained_run_start(labels: list[int]) -> int:
    """Where the last run of trained (non-ignored) labels starts: the last assistant turn."""
    end = len(labels)
    while end > 0 and labels[end - 1] == IGNORE_INDEX:
        end -= 1
    start = end
    while start > 0 and labels[start - 1] != IGNORE_INDEX:
        start -= 1
    return start


def truncate(prompt: list[int], response: list[int], limit: int,
             bos_token_id: int | None = None) -> EncodedItem:
    """Fit prompt + response into `limit` tokens by the policy in the module docstring."""
    if len(prompt) + len(response) <= limit:
        return EncodedItem(prompt + response, truncated=False)
    keep_response = min(len(response), limit - min(len(prompt), limit // 2))
    keep_prompt = limit - keep_response
    head: list[int] = []
    if keep_prompt > 0 and prompt and bos_token_id is not None and prompt[0] == bos_token_id:
        head, prompt, keep_prompt = prompt[:1], prompt[1:], keep_prompt - 1
    tail = prompt[len(prompt) - keep_prompt:] if keep_prompt > 0 else []
    return EncodedItem(head + tail + response[:keep_response], truncated=True)


def encode_item(tokenizer: PreTrainedTokenizerBase, item: ScoreItem, limit: int) -> EncodedItem:
    prompt, response = split_item(tokenizer, item)
    return truncate(prompt, response, limit, tokenizer.bos_token_id)
