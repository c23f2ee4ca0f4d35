"""Prompt/response text → token ids with response-only labels, and the padded batches built from them.

Supervised row shapes (`services.datasets.SHAPES`):

- `prompt_completion`, `{"prompt": str, "completion": str}`: the loss covers the completion
  and the closing eos;
- `chat`, `{"messages": [{"role", "content"}, ...]}` (OpenAI chat): the conversation is
  rendered with the tokenizer's chat template and the loss covers the assistant turns only;
- `conversational_prompt_completion`, `{"prompt": [messages], "completion": [messages]}`
  (TRL's): prompt and completion rendered as one conversation, the loss on the completion's
  assistant turns only;
- `text`, `{"text": str}` (TRL's language modelling): the loss covers every token.

Text is cut into segments at the boundaries between trained and untrained parts and each segment
is tokenized on its own, so a completion is tokenized exactly as the model will produce it after
the rendered prompt at generation time.

A scored text (reward models, the reward service, online RL) is laid out the same way: the
response is the last run of tokens supervised training would train on (`split_scored`).
Batches are right-padded (`pad_right`); a prompt alone is encoded by `encode_prompt`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from jinja2 import TemplateError
from torch import Tensor
from transformers import PreTrainedTokenizerBase

from modeling.logprobs import IGNORE_INDEX


@dataclass(frozen=True)
class TokenizedExample:
    input_ids: list[int]
    """Token ids of the whole example, prompt and completion, at most max_seq_length long."""
    labels: list[int]
    """Same length as input_ids: the token id where it is trained on, IGNORE_INDEX elsewhere."""

    @property
    def num_completion_tokens(self) -> int:
        return sum(label != IGNORE_INDEX for label in self.labels)


@dataclass
class SupervisedBatch:
    input_ids: Tensor  # (B, T) token ids, right-padded with the pad id
    attention_mask: Tensor  # (B, T) 1 on real tokens, 0 on padding
    labels: Tensor  # (B, T) target token ids on completion tokens, IGNORE_INDEX elsewhere

    def to(self, device: torch.device | str) -> SupervisedBatch:
        return SupervisedBatch(
            input_ids=self.input_ids.to(device),
            attention_mask=self.attention_mask.to(device),
            labels=self.labels.to(device),
        )

    @property
    def num_tokens(self) -> int:
        """Real (non-padding) tokens the model reads in this batch."""
        return int(self.attention_mask.sum().item())


def _encode(tokenizer: PreTrainedTokenizerBase, text: str, special_tokens: bool) -> list[int]:
    return list(tokenizer(text, add_special_tokens=special_tokens)["input_ids"])


def _encode_continuation(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    """``text`` tokenized as the continuation of earlier text, not as the start of one: a
    sentencepiece tokenizer (Mistral's, Llama 2's) writes a ``▁`` before the first word of a
    text, which the same words in mid-text do not get. It is encoded after a special token
    (matched whole, so nothing merges across it, and the text no longer starts the input),
    whose ids are then dropped."""
    if not text:
        return []
    anchor = tokenizer.eos_token or tokenizer.all_special_tokens[0]
    anchor_ids = _encode(tokenizer, anchor, special_tokens=False)
    ids = _encode(tokenizer, anchor + text, special_tokens=False)
    if ids[:len(anchor_ids)] != anchor_ids:  # pragma: no cover - a special token is atomic
        return _encode(tokenizer, text, special_tokens=False)
    return ids[len(anchor_ids):]


def _truncate(input_ids: list[int], labels: list[int], max_seq_length: int) -> TokenizedExample:
    """Keep the first max_seq_length tokens: the prompt's start and as much completion as fits."""
    return TokenizedExample(input_ids[:max_seq_length], labels[:max_seq_length])


def tokenize_prompt_completion(
    tokenizer: PreTrainedTokenizerBase, prompt: str, completion: str, max_seq_length: int
) -> TokenizedExample:
    """ids = tokenizer(prompt) + tokenizer(completion, no special tokens) + eos; loss after the prompt."""
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no eos token; a completion needs one to end on")
    prompt_ids = _encode(tokenizer, prompt, special_tokens=True)
    completion_ids = _encode_continuation(tokenizer, completion)
    completion_ids.append(tokenizer.eos_token_id)
    input_ids = prompt_ids + completion_ids
    labels = [IGNORE_INDEX] * len(prompt_ids) + completion_ids
    return _truncate(input_ids, labels, max_seq_length)


def render_chat(
    tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, Any]], generation_prompt: bool,
    tools: list[dict[str, Any]] | None = None,
) -> str:
    """The conversation as the model's chat template writes it (``tools`` handed to the
    template, which renders them where its family does). ValueError when the template refuses
    it (a role it has no place for, e.g. `tool` or `developer` in a template that knows only
    system, user and assistant, or a system turn in Gemma's), with the template's own reason."""
    try:
        text = tokenizer.apply_chat_template(
            messages, tools=tools or None, tokenize=False, add_generation_prompt=generation_prompt
        )
    except TemplateError as exc:
        roles = sorted({str(m.get("role")) for m in messages})
        raise ValueError(f"the model's chat template refused these messages (roles "
                         f"{', '.join(roles)}): {exc}") from exc
    assert isinstance(text, str)
    return text


SENTINEL = "ALIGNDTURN7f3c"
"""Stands in for an assistant turn's content to find where a template writes it."""


def assistant_spans(
    tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, Any]],
    tools: list[dict[str, Any]] | None = None, trained_from: int = 0,
) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans [start, end) of its assistant turns
    (those at index ``trained_from`` or later).

    A turn starts where the model starts writing it at inference and ends after its
    end-of-turn marker, so the marker is trained too. Where the template renders a
    conversation as an extension of its prefixes, that is where the conversation before the
    turn, rendered with the generation prompt, ends, and where the conversation through the
    turn ends. Some templates do not (Mistral's writes the system message into the last user
    turn only): then the turn is found in the whole rendering (`_turn_in_place`).
    """
    text = render_chat(tokenizer, messages, generation_prompt=False, tools=tools)
    spans: list[tuple[int, int]] = []
    for index, message in enumerate(messages):
        if message["role"] != "assistant" or index < trained_from:
            continue
        previous_end = spans[-1][1] if spans else 0
        before = render_chat(tokenizer, messages[:index], generation_prompt=True, tools=tools)
        through = render_chat(tokenizer, messages[: index + 1], generation_prompt=False,
                              tools=tools)
        if text.startswith(before) and text.startswith(through) and len(before) >= previous_end:
            span = (len(before), len(through))
        else:
            span = _turn_in_place(tokenizer, messages, index, text, tools)
        if span[0] < previous_end or span[1] < span[0]:
            raise ValueError(
                "the tokenizer's chat template does not render each assistant turn once, in "
                f"order (at message {index}); completion-only labels need one that does")
        spans.append(span)
    return text, spans


def _turn_in_place(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, Any]],
                   index: int, text: str,
                   tools: list[dict[str, Any]] | None) -> tuple[int, int]:
    """Message ``index``'s span in ``text``, the whole conversation's rendering, for a
    template whose prefixes render differently: its content is where a `SENTINEL` in its place
    lands (the rendering around it unchanged), widened by what the template writes around an
    assistant's content after a generation prompt, e.g. Mistral's ``' '`` before and ``</s>``
    after (read off a one-turn probe conversation)."""
    marked = [*messages[:index], {**messages[index], "content": SENTINEL}]
    whole = render_chat(tokenizer, [*marked, *messages[index + 1:]], False, tools)
    at = whole.find(SENTINEL)
    head, tail = whole[:at], whole[at + len(SENTINEL):]
    if (at < 0 or whole.count(SENTINEL) != 1 or not text.startswith(head)
            or not text.endswith(tail) or len(head) + len(tail) > len(text)):
        raise ValueError(
            "the tokenizer's chat template does not write an assistant turn's content as it "
            f"is given (at message {index}); completion-only labels need one that does")
    start, end = len(head), len(text) - len(tail)
    probe = [{"role": "user", "content": "x"}]
    prompt = render_chat(tokenizer, probe, True)
    last = render_chat(tokenizer, [*probe, {"role": "assistant", "content": SENTINEL}], False)
    mark = last.find(SENTINEL)
    lead = last[len(prompt):mark] if last.startswith(prompt) else ""
    closing = last[mark + len(SENTINEL):]
    if lead and text[:start].endswith(lead):
        start -= len(lead)
    if closing and text[end:].startswith(closing):
        end += len(closing)
    return start, end


def tokenize_messages(
    tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, Any]], max_seq_length: int,
    tools: list[dict[str, Any]] | None = None, trained_from: int = 0,
) -> TokenizedExample:
    """Render a chat with the tokenizer's template; labels only on assistant turns, and only
    on those from message ``trained_from`` on (a conversational completion's, not its
    prompt's)."""
    if tokenizer.chat_template is None:
        raise ValueError("rows with 'messages' need a tokenizer with a chat_template")
    text, spans = assistant_spans(tokenizer, messages, tools, trained_from)
    input_ids: list[int] = []
    labels: list[int] = []
    position = 0
    # Special tokens come from the template's text (e.g. its bos), never added a second time.
    for start, end in [*spans, (len(text), len(text))]:
        untrained = (_encode(tokenizer, text[:start], special_tokens=False) if position == 0
                     else _encode_continuation(tokenizer, text[position:start]))
        trained = _encode_continuation(tokenizer, text[start:end])
        input_ids += untrained + trained
        labels += [IGNORE_INDEX] * len(untrained) + trained
        position = end
    return _truncate(input_ids, labels, max_seq_length)


def tokenize_text(
    tokenizer: PreTrainedTokenizerBase, text: str, max_seq_length: int
) -> TokenizedExample:
    """Language modelling: ids = tokenizer(text) + eos, the loss on every token."""
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no eos token; a text needs one to end on")
    input_ids = [*_encode(tokenizer, text, special_tokens=True), tokenizer.eos_token_id]
    return _truncate(input_ids, list(input_ids), max_seq_length)


def tokenize_supervised_row(
    tokenizer: PreTrainedTokenizerBase, row: dict[str, Any], max_seq_length: int
) -> TokenizedExample:
    """A row of any supervised shape → one TokenizedExample."""
    if "messages" in row:
        return tokenize_messages(tokenizer, row["messages"], max_seq_length, row.get("tools"))
    if "text" in row:
        return tokenize_text(tokenizer, row["text"], max_seq_length)
    if "prompt" in row and "completion" in row:
        prompt, completion = row["prompt"], row["completion"]
        if isinstance(prompt, list) and isinstance(completion, list):
            return tokenize_messages(tokenizer, [*prompt, *completion], max_seq_length,
                                     row.get("tools"), trained_from=len(prompt))
        return tokenize_prompt_completion(tokenizer, prompt, completion, max_seq_length)
    raise ValueError(f"a supervised row needs 'messages', 'text', or 'prompt' and "
                     f"'completion', got keys {sorted(row)}")


def collate(examples: list[TokenizedExample], pad_token_id: int) -> SupervisedBatch:
    """Right-pad to the longest example: pad id in input_ids, 0 in the mask, IGNORE_INDEX in labels."""
    length = max(len(example.input_ids) for example in examples)
    input_ids = torch.full((len(examples), length), pad_token_id, dtype=torch.long)  # (B, T)
    attention_mask = torch.zeros((len(examples), length), dtype=torch.long)  # (B, T)
    labels = torch.full((len(examples), length), IGNORE_INDEX, dtype=torch.long)  # (B, T)
    for row, example in enumerate(examples):
        size = len(example.input_ids)
        input_ids[row, :size] = torch.tensor(example.input_ids, dtype=torch.long)
        attention_mask[row, :size] = 1
        labels[row, :size] = torch.tensor(example.labels, dtype=torch.long)
    return SupervisedBatch(input_ids=input_ids, attention_mask=attention_mask, labels=labels)


UNLIMITED = 1 << 30


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


def prompt_messages(row: dict[str, Any]) -> list[dict[str, Any]] | None:
    """The conversation a prompts row asks the model to answer (`openai_rft`'s `messages`, a
    `conversational_prompt_only` row's `prompt`); None for a plain-text prompt."""
    if "messages" in row:
        messages: list[dict[str, Any]] = row["messages"]
        return messages
    prompt = row.get("prompt")
    return prompt if isinstance(prompt, list) else None


def encode_prompt(tokenizer: PreTrainedTokenizerBase, row: dict[str, Any],
                  max_tokens: int) -> list[int]:
    """A prompts row as the model continues it: a text `prompt` tokenized with the tokenizer's
    special tokens, or its messages (`prompt_messages`) rendered by its chat template, with
    the row's `tools`, and the generation prompt. Longer prompts keep their last `max_tokens`
    ids (the part the completion follows)."""
    messages = prompt_messages(row)
    if messages is not None:
        if tokenizer.chat_template is None:
            raise ValueError("rows with messages need a tokenizer with a chat_template")
        text = render_chat(tokenizer, messages, generation_prompt=True, tools=row.get("tools"))
        ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    elif "prompt" in row:
        ids = list(tokenizer(row["prompt"])["input_ids"])
    else:
        raise ValueError(f"a prompts row needs 'prompt' or 'messages', got keys {sorted(row)}")
    if not ids:
        raise ValueError(f"prompt row {row!r} tokenizes to nothing")
    return ids[-max_tokens:]


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
    its prompt and padding: what `modeling.logprobs.response_logps` sums over."""
    positions = torch.arange(texts.input_ids.shape[1], device=texts.input_ids.device)  # (T,)
    first = torch.tensor(starts, device=texts.input_ids.device).unsqueeze(1)  # (N, 1)
    in_response = (positions.unsqueeze(0) >= first) & texts.attention_mask.bool()  # (N, T)
    return torch.where(in_response, texts.input_ids, IGNORE_INDEX)
