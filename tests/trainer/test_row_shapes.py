"""The row shapes people bring (OpenAI's, TRL's) as the trainer reads them, on the demo
tokenizer and a real-style one (Qwen2's byte-level BPE and chat template): a conversational
prompt/completion trains its completion only, a text every token; conversational prompts
and an RFT row's tools reach the chat template, and the whole row is the grader's item."""

from __future__ import annotations

from typing import Any

import pytest
from transformers import PreTrainedTokenizerBase

from modeling.logprobs import IGNORE_INDEX
from modeling.sequences import (
    UNLIMITED,
    TokenizedExample,
    encode_prompt,
    render_chat,
    tokenize_messages,
    tokenize_supervised_row,
)
from tests.services.test_datasets import ROWS, TOOLS
from trainer.demo_world import build_tokenizer
from trainer.online.scoring import reward_item
from trainer.real_world import FAMILIES
from trainer.real_world.build import build_tokenizer as build_family_tokenizer
from trainer.reward_data import tokenize_pair

HISTORY = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "1+1="},
           {"role": "assistant", "content": "2"}, {"role": "user", "content": "2+3="}]
ANSWER = [{"role": "assistant", "content": "5"}]


@pytest.fixture(scope="module")
def tokenizers() -> dict[str, PreTrainedTokenizerBase]:
    return {"demo": build_tokenizer(), "qwen2": build_family_tokenizer(FAMILIES["qwen2"])}


def trained_runs(tokenizer: PreTrainedTokenizerBase, example: TokenizedExample) -> list[str]:
    """The text of each run of trained tokens, in order."""
    runs: list[list[int]] = []
    previous = IGNORE_INDEX
    for token, label in zip(example.input_ids, example.labels, strict=True):
        if label != IGNORE_INDEX:
            if previous == IGNORE_INDEX:
                runs.append([])
            runs[-1].append(token)
        previous = label
    return [str(tokenizer.decode(run)) for run in runs]


@pytest.mark.parametrize("name", ["demo", "qwen2"])
def test_a_conversational_completion_trains_its_turns_only(
        tokenizers: dict[str, PreTrainedTokenizerBase], name: str) -> None:
    """The prompt's own assistant turn ("2") is context, not a target: of the turns a chat
    row of the same conversation trains, only the completion's is trained."""
    tokenizer = tokenizers[name]
    row = {"prompt": HISTORY, "completion": ANSWER}
    example = tokenize_supervised_row(tokenizer, row, max_seq_length=512)
    as_chat = tokenize_messages(tokenizer, HISTORY + ANSWER, max_seq_length=512)
    assert tokenizer.decode(example.input_ids) == render_chat(tokenizer, HISTORY + ANSWER, False)
    assert len(trained_runs(tokenizer, as_chat)) == 2
    assert trained_runs(tokenizer, example) == trained_runs(tokenizer, as_chat)[-1:]
    assert trained_runs(tokenizer, example)[0].startswith("5")
    assert all(label in (IGNORE_INDEX, token)
               for token, label in zip(example.input_ids, example.labels, strict=True))


def test_a_conversational_completion_is_rendered_with_the_row_s_tools(
        tokenizers: dict[str, PreTrainedTokenizerBase]) -> None:
    tokenizer = tokenizers["qwen2"]
    row = {"prompt": HISTORY[1:2], "completion": ANSWER[:1], "tools": TOOLS}
    example = tokenize_supervised_row(tokenizer, row, max_seq_length=512)
    assert '"name": "add"' in tokenizer.decode(example.input_ids)
    assert trained_runs(tokenizer, example)[0].startswith("5")


def test_a_text_row_trains_every_token_and_ends_on_eos(
        tokenizers: dict[str, PreTrainedTokenizerBase]) -> None:
    tokenizer = tokenizers["demo"]
    example = tokenize_supervised_row(tokenizer, ROWS["text"], max_seq_length=64)
    assert example.labels == example.input_ids
    assert example.input_ids[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(example.input_ids, skip_special_tokens=True) == "1+1=2"


@pytest.mark.parametrize("name", ["demo", "qwen2"])
def test_conversational_and_rft_prompts_render_as_the_chat_they_hold(
        tokenizers: dict[str, PreTrainedTokenizerBase], name: str) -> None:
    tokenizer = tokenizers[name]
    conversational = encode_prompt(tokenizer, {"prompt": HISTORY, "answer": "5"}, UNLIMITED)
    assert conversational == encode_prompt(tokenizer, {"messages": HISTORY}, UNLIMITED)
    assert tokenizer.decode(conversational) == render_chat(tokenizer, HISTORY, True)
    if name == "qwen2":  # the demo template renders no tools
        rft = str(tokenizer.decode(encode_prompt(tokenizer, ROWS["openai_rft"], UNLIMITED)))
        assert '"name": "add"' in rft and rft.endswith("<|im_start|>assistant\n")


def test_the_grader_s_item_is_the_whole_row() -> None:
    rft: dict[str, Any] = ROWS["openai_rft"]
    item = reward_item(rft, "2")
    assert item["messages"] == [*rft["messages"], {"role": "assistant", "content": "2"}]
    assert item["item"] == rft and item["item"]["tools"] == TOOLS and item["item"]["answer"] == "2"
    conversational = reward_item(ROWS["conversational_prompt_only"], "2")
    assert conversational["messages"][-1] == {"role": "assistant", "content": "2"}
    assert "prompt" not in conversational and conversational["item"]["answer"] == "2"


def test_a_conversational_pair_splits_at_each_response(
        tokenizers: dict[str, PreTrainedTokenizerBase]) -> None:
    tokenizer = tokenizers["demo"]
    pair = tokenize_pair(tokenizer, ROWS["conversational_preference"], max_seq_length=256)
    assert tokenizer.decode(pair.chosen_ids[pair.chosen_start:]) == "2<|end|>"
    assert tokenizer.decode(pair.rejected_ids[pair.rejected_start:]) == "3<|end|>"
    assert pair.chosen_ids[:pair.chosen_start] == pair.rejected_ids[:pair.rejected_start]
