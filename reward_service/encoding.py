"""Items → token ids, as the reward model trainer lays them out, and the truncation policy.

Layout (the one `modeling.sequences` uses for supervised rows, so a reward model sees at scoring what
it saw in training):

- `{"prompt", "response"}`: tokenizer(prompt) (with its special tokens, e.g. `<bos>`) +
  tokenizer(response, no special tokens) + `<eos>`;
- `{"messages"}`: the chat rendered with the tokenizer's template; the response is the last
  assistant turn (its end-of-turn marker included), the prompt everything before it.

The split into prompt and response is the trainer's own (`modeling.sequences.split_scored`):
an implicit (log-probability) reward model sums log π over exactly the response tokens it was
trained to sum over.

Truncation, when prompt + response is longer than the limit: the score is read at the last
token, so the response's start must survive, and the prompt's end is the context closest to
it. The response keeps at most limit - min(len(prompt), limit // 2) tokens from its start and
the prompt keeps its last tokens in what remains (its leading `<bos>`, if any, is kept). An
item that was cut is reported with `truncated: true`. For an implicit reward model a cut
response scores only the tokens kept, so its reward is that of a shorter response (a sum of
log-probabilities of fewer tokens, usually higher) — compare truncated scores with care.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from transformers import PreTrainedTokenizerBase

from modeling.sequences import split_scored
from reward_service.protocol import ScoreItem


@dataclass(frozen=True)
class EncodedItem:
    input_ids: list[int]
    truncated: bool
    response_start: int
    """Index in input_ids of the response's first token (len(input_ids) if none survived)."""

    def __len__(self) -> int:
        """Its length in tokens, which the micro-batcher budgets by."""
        return len(self.input_ids)


def split_item(tokenizer: PreTrainedTokenizerBase, item: ScoreItem) -> tuple[list[int], list[int]]:
    """(prompt ids, response ids) of an item, untruncated."""
    if item.messages is not None:
        messages: list[dict[str, Any]] = [m.model_dump() for m in item.messages]
        return split_scored(tokenizer, messages[:-1], messages[-1:])
    return split_scored(tokenizer, str(item.prompt), str(item.response))


def truncate(prompt: list[int], response: list[int], limit: int,
             bos_token_id: int | None = None) -> EncodedItem:
    """Fit prompt + response into `limit` tokens by the policy in the module docstring."""
    if len(prompt) + len(response) <= limit:
        return EncodedItem(prompt + response, truncated=False, response_start=len(prompt))
    keep_response = min(len(response), limit - min(len(prompt), limit // 2))
    keep_prompt = limit - keep_response
    head: list[int] = []
    if keep_prompt > 0 and prompt and bos_token_id is not None and prompt[0] == bos_token_id:
        head, prompt, keep_prompt = prompt[:1], prompt[1:], keep_prompt - 1
    tail = prompt[len(prompt) - keep_prompt:] if keep_prompt > 0 else []
    return EncodedItem(head + tail + response[:keep_response], truncated=True,
                       response_start=len(head) + len(tail))


def encode_item(tokenizer: PreTrainedTokenizerBase, item: ScoreItem, limit: int) -> EncodedItem:
    prompt, response = split_item(tokenizer, item)
    return truncate(prompt, response, limit, tokenizer.bos_token_id)
