"""The real-style families as a user's checkpoint folders: byte-level and byte-fallback BPE
tokenizers with the families' special tokens, chat templates and stop tokens, sharded and
bf16 safetensors, and completion-only labels checked token by token against each template's
own rendering."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from modeling.logprobs import IGNORE_INDEX
from modeling.sequences import assistant_spans, render_chat, tokenize_messages
from tests.conftest import CHAT_FAMILIES, FAMILIES
from trainer.real_world import FAMILIES as SPECS

STOPS = {"qwen2": ["<|im_end|>", "<|endoftext|>"],
         "llama3": ["<|end_of_text|>", "<|eom_id|>", "<|eot_id|>"],
         "mistral": ["</s>"], "gemma": ["<eos>", "<end_of_turn>"], "gpt2": ["<|endoftext|>"]}


@pytest.mark.parametrize("family", FAMILIES)
def test_a_family_folder_loads_as_its_architecture_with_its_stop_tokens(
        family: str, family_models: dict[str, Path]) -> None:
    folder = family_models[family]
    tokenizer = AutoTokenizer.from_pretrained(folder)
    config = AutoConfig.from_pretrained(folder)
    assert 2000 < len(tokenizer) <= config.vocab_size  # Qwen2 pads its vocabulary past it
    stops = GenerationConfig.from_pretrained(folder).eos_token_id
    stops = [stops] if isinstance(stops, int) else stops
    assert tokenizer.convert_ids_to_tokens(stops) == STOPS[family]
    assert (tokenizer.pad_token is None) == (family in ("llama3", "mistral", "gpt2"))
    assert (tokenizer.chat_template is not None) == (family in CHAT_FAMILIES)
    model = AutoModelForCausalLM.from_pretrained(folder)
    assert type(model).__name__ == {"qwen2": "Qwen2ForCausalLM", "llama3": "LlamaForCausalLM",
                                    "mistral": "MistralForCausalLM", "gemma": "GemmaForCausalLM",
                                    "gpt2": "GPT2LMHeadModel"}[family]


def test_checkpoints_are_saved_as_users_have_them(family_models: dict[str, Path]) -> None:
    index = json.loads((family_models["qwen2"] / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1  # sharded
    with safe_open(family_models["gemma"] / "model.safetensors", "pt") as weights:
        names = weights.keys()  # a safetensors handle, not a dict: it has no __iter__
        assert all(weights.get_tensor(name).dtype == torch.bfloat16 for name in names)
    rope = AutoConfig.from_pretrained(family_models["llama3"]).rope_parameters
    assert rope["rope_type"] == "llama3"


@pytest.mark.parametrize("family", FAMILIES)
def test_any_byte_is_a_token_and_wide_characters_take_several(
        family: str, family_models: dict[str, Path]) -> None:
    tokenizer = AutoTokenizer.from_pretrained(family_models[family])
    for text in ("\x00", "\x1b[31m", "日本語 café 🙂"):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert tokenizer.unk_token_id not in ids or SPECS[family].unk == SPECS[family].eos
        assert tokenizer.decode(ids).strip() == text.strip()
    # A CJK character is three byte tokens: a model can stop after the first.
    assert len(tokenizer("日", add_special_tokens=False)["input_ids"]) >= 3
    partial = tokenizer("日", add_special_tokens=False)["input_ids"][-1:]
    assert "\ufffd" in tokenizer.decode(partial)


@pytest.mark.parametrize("family", CHAT_FAMILIES)
def test_completion_labels_are_the_templates_own_assistant_turns(
        family: str, family_models: dict[str, Path]) -> None:
    """Token by token: the ids are the rendering's own, and the trained ones are exactly each
    assistant turn as the template writes it, its end-of-turn marker included (Mistral's
    template writes the system message into the last user turn only, so the rendering of a
    prefix is not a prefix of the rendering)."""
    tokenizer = AutoTokenizer.from_pretrained(family_models[family])
    system = [] if family == "gemma" else [{"role": "system", "content": "Be brief."}]
    messages = [*system, {"role": "user", "content": "12+3="},
                {"role": "assistant", "content": " 15 "},
                {"role": "user", "content": "Now 4+4= please"},
                {"role": "assistant", "content": "8, café 日本"}]
    example = tokenize_messages(tokenizer, messages, max_seq_length=512)
    text, spans = assistant_spans(tokenizer, messages)
    assert example.input_ids == tokenizer(text, add_special_tokens=False)["input_ids"]
    runs, start = [], None
    for index, label in enumerate([*example.labels, IGNORE_INDEX]):
        if label != IGNORE_INDEX and start is None:
            start = index
        elif label == IGNORE_INDEX and start is not None:
            runs.append((start, index))
            start = None
    assert len(runs) == len(spans) == 2
    ids = example.input_ids
    for (first, last), (begin, end) in zip(runs, spans, strict=True):
        assert example.labels[first:last] == ids[first:last]
        # What the trained ids add to the text is the turn exactly as the template wrote it.
        assert tokenizer.decode(ids[:last]) == tokenizer.decode(ids[:first]) + text[begin:end]
    if family == "mistral":
        prompt = render_chat(tokenizer, messages[:-1], generation_prompt=True)
        assert not text.startswith(prompt) and "Be brief." in prompt and "Be brief." not in text
        assert text[spans[0][0]:spans[0][1]] == "  15 </s>"


def test_tools_reach_the_template(family_models: dict[str, Path]) -> None:
    tool = {"type": "function", "function": {"name": "add", "parameters": {}}}
    for family in ("qwen2", "llama3"):
        tokenizer = AutoTokenizer.from_pretrained(family_models[family])
        text = render_chat(tokenizer, [{"role": "user", "content": "1+1="}], True, tools=[tool])
        assert '"name": "add"' in text
