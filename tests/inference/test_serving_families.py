"""Every real-style family served right on both engines: completions and chat, any of the
model's stop tokens ending a choice without its text, multi-byte characters streamed whole,
log-probabilities with each token's raw bytes and its place in the text, a vocabulary padded
past the tokenizer's never sampled, and VAS and best-of-N on a byte-level and a sentencepiece
family.

Each family's checkpoint is taught a script first (`tests.inference.scripted`): after a prompt
it writes ``日本語 café 🙂``, whose characters are several tokens each (bytes in every family's
vocabulary: ``<0xE6><0x97><0xA5>`` or ``æĹ¥``), then a stop token that is not always the
tokenizer's eos (Llama 3's ``<|eom_id|>``, the middle of its three). One server per engine
serves all five families, saved as their families save them (Gemma in bf16, Qwen2 sharded).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import pytest
from transformers import AutoTokenizer

from modeling.sequences import render_chat
from services.db.engine import session_factory, session_scope
from services.registry import declare_base_models, register_model
from services.web import ServerThread
from tests.conftest import CHAT_FAMILIES, FAMILIES
from tests.inference.conftest import ENGINES, InferenceWorld, inference_settings
from tests.inference.models import make_value_model
from tests.inference.scripted import Script, continuation_ids, teach
from trainer.real_world.families import FAMILIES as SPECS

TARGET = "日本語 café 🙂"
PROMPT = "Say it:"
CHAT = [{"role": "user", "content": "Say it, please."}]
COMPLETION_STOP = {"qwen2": "<|endoftext|>", "llama3": "<|eom_id|>", "mistral": "</s>",
                   "gemma": "<eos>", "gpt2": "<|endoftext|>"}
"""The stop token each family's script ends a completion with."""
CHAT_STOP = {"qwen2": "<|im_end|>", "llama3": "<|eot_id|>", "mistral": "</s>",
             "gemma": "<end_of_turn>"}
"""The end of turn each chat family's script ends an answer with."""

PADDED_PROMPT = "Which id?"
PADDED_REPLY = " no padding"
PADDED_ROWS = 128
"""Qwen2's vocabulary is taught with this many rows past its tokenizer's, and to prefer one of
them after `PADDED_PROMPT` (3 to 1 over `PADDED_REPLY`)."""
GUIDED = ("qwen2", "mistral")
"""A byte-level and a sentencepiece family, with value models (VAS) and best-of-N."""


@dataclass(frozen=True)
class Families:
    ids: dict[str, str]
    """Family → its registered base model id."""
    paths: dict[str, Path]
    values: dict[str, str]
    """Family (`GUIDED`) → a value model tied to its base."""
    gpt2_adapter: str
    """A LoRA adapter over the GPT-2 base (vLLM has no LoRA layers for GPT-2)."""
    key: str


def _scripts(family: str, folder: Path) -> list[Script]:
    ends = {COMPLETION_STOP[family], *([CHAT_STOP[family]] if family in CHAT_STOP else [])}
    assert ends <= set(SPECS[family].stops)  # every script ends on one of the model's stops
    tokenizer = AutoTokenizer.from_pretrained(folder)
    stop = tokenizer.convert_tokens_to_ids
    reply = continuation_ids(tokenizer, TARGET)
    scripts = [Script(tokenizer(PROMPT)["input_ids"], reply + [stop(COMPLETION_STOP[family])])]
    if family in CHAT_FAMILIES:
        chat = render_chat(tokenizer, CHAT, generation_prompt=True)
        scripts.append(Script(tokenizer(chat, add_special_tokens=False)["input_ids"],
                              reply + [stop(CHAT_STOP[family])]))
    if family == "qwen2":
        padded, prompt = len(tokenizer) + 7, tokenizer(PADDED_PROMPT)["input_ids"]
        alternative = continuation_ids(tokenizer, PADDED_REPLY) + [stop("<|endoftext|>")]
        scripts += [Script(prompt, alternative, first={padded: 0.75, alternative[0]: 0.25}),
                    Script(prompt + [padded], [stop("<|endoftext|>")])]
    return scripts


@pytest.fixture(scope="module")
def families(family_models: dict[str, Path], database_url: str,
             inference_world: InferenceWorld, tmp_path_factory: pytest.TempPathFactory
             ) -> Families:
    root, tag = tmp_path_factory.mktemp("families"), uuid.uuid4().hex[:8]
    paths = {}
    for family in FAMILIES:
        source = family_models[family]
        extra = len(AutoTokenizer.from_pretrained(source)) + PADDED_ROWS
        paths[family] = teach(source, root / family, family, _scripts(family, source),
                              vocab_size=extra if family == "qwen2" else None)
    ids = {family: f"{family}-{tag}" for family in FAMILIES}
    values = {family: f"vm:{ids[family]}:{tag}" for family in GUIDED}
    with session_scope(session_factory(database_url)) as session:
        declare_base_models(session, {ids[f]: str(paths[f]) for f in FAMILIES})
        for seed, family in enumerate(GUIDED):
            folder = make_value_model(paths[family], root / f"value-{family}", seed=40 + seed)
            register_model(session, model_id=values[family], project_id=inference_world.project,
                           kind="value_model", path=str(folder), base_model=ids[family],
                           job_id=f"job-{tag}")
        adapter = f"ft:{ids['gpt2']}:lora:{tag}"
        register_model(session, model_id=adapter, project_id=inference_world.project,
                       kind="lora_adapter", path=str(_gpt2_adapter(paths["gpt2"], root)),
                       base_model=ids["gpt2"], job_id=f"job-{tag}")
    return Families(ids, paths, values, adapter, inference_world.key)


def _gpt2_adapter(base: Path, root: Path) -> Path:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn"], fan_in_fan_out=True)
    get_peft_model(model, config).save_pretrained(root / "gpt2-adapter")
    return root / "gpt2-adapter"


@pytest.fixture(scope="module", params=sorted(ENGINES))
def server_engine(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def server(server_engine: str, database_url: str, grader_reward_url: str,
           families: Families) -> Iterator[str]:
    """The service on each engine in turn, every family loaded at once (vLLM: an engine each,
    with a KV cache of a few MiB, plenty for these models)."""
    from inference.main import create_app

    overrides: dict[str, Any] = dict(ENGINES[server_engine])
    if server_engine == "vllm":
        overrides.update(vllm_kv_cache_gib=0.03, vllm_max_loaded_models=len(FAMILIES))
    with ServerThread(create_app(inference_settings(database_url, grader_reward_url,
                                                    **overrides))) as running:
        yield running.url


@pytest.fixture
def client(server: str, families: Families) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server}/v1", api_key=families.key, max_retries=0,
                         timeout=120)


def complete(client: openai.OpenAI, families: Families, family: str, **body: Any) -> Any:
    body = {"model": families.ids[family], "prompt": PROMPT, "max_tokens": 40, "temperature": 0,
            **body}
    return client.completions.create(**body)


def chat(client: openai.OpenAI, families: Families, family: str, **body: Any) -> Any:
    body = {"model": families.ids[family], "messages": CHAT, "max_tokens": 40, "temperature": 0,
            **body}
    return client.chat.completions.create(**body)


# -- text and stops ---------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_a_completion_ends_at_its_stop_token_without_its_text(
        client: openai.OpenAI, families: Families, family: str) -> None:
    response = complete(client, families, family)
    choice = response.choices[0]
    assert (choice.text, choice.finish_reason) == (TARGET, "stop")
    assert COMPLETION_STOP[family] not in choice.text
    tokenizer = AutoTokenizer.from_pretrained(families.paths[family])
    assert response.usage.completion_tokens == len(continuation_ids(tokenizer, TARGET)) + 1


@pytest.mark.parametrize("family", FAMILIES)
def test_a_requested_stop_token_ends_the_text_before_it(
        client: openai.OpenAI, families: Families, family: str) -> None:
    """An ordinary token (the ``f`` of café) asked for as a stop token: like a stop string,
    its text is no part of the answer."""
    tokenizer = AutoTokenizer.from_pretrained(families.paths[family])
    reply = continuation_ids(tokenizer, TARGET)
    f = next(token for token in reply if tokenizer.decode([token]) == "f")
    choice = complete(client, families, family, extra_body={"stop_token_ids": [f]}).choices[0]
    assert (choice.text, choice.finish_reason) == (TARGET[:TARGET.index("f")], "stop")


@pytest.mark.parametrize("family", CHAT_FAMILIES)
def test_a_chat_answer_ends_at_the_end_of_turn_without_its_text(
        client: openai.OpenAI, families: Families, family: str) -> None:
    choice = chat(client, families, family).choices[0]
    assert (choice.message.content, choice.finish_reason) == (TARGET, "stop")


def test_chat_with_a_model_without_a_chat_template_is_a_400_naming_it(
        client: openai.OpenAI, families: Families) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        chat(client, families, "gpt2")
    error = caught.value.body
    assert isinstance(error, dict) and error["code"] == "no_chat_template"
    assert families.ids["gpt2"] in error["message"] and "chat template" in error["message"]


def test_a_lora_adapter_over_gpt2_is_served_where_its_engine_can(
        client: openai.OpenAI, families: Families, server_engine: str) -> None:
    """vLLM has no LoRA layers for GPT-2: it serves the base, and refuses the adapter with a
    400 saying so, rather than failing to start the base's engine."""
    if server_engine == "torch":  # B is zero: the adapter writes what its base writes
        choice = complete(client, families, "gpt2", model=families.gpt2_adapter).choices[0]
        assert choice.text == TARGET
        return
    with pytest.raises(openai.BadRequestError) as caught:
        complete(client, families, "gpt2", model=families.gpt2_adapter)
    error = caught.value.body
    assert isinstance(error, dict) and error["code"] == "unsupported_on_engine"
    assert families.gpt2_adapter in error["message"] and "GPT2" in error["message"]


@pytest.mark.parametrize("family", FAMILIES)
def test_a_stream_of_split_characters_joins_to_the_whole_text(
        client: openai.OpenAI, families: Families, family: str) -> None:
    chunks = [c.choices[0].text for c in complete(client, families, family, stream=True)]
    assert "".join(chunks) == TARGET
    assert not any("\ufffd" in chunk for chunk in chunks)
    if family in CHAT_FAMILIES:
        pieces = [c.choices[0].delta.content or "" for c in
                  chat(client, families, family, stream=True) if c.choices]
        assert "".join(pieces) == TARGET
        assert not any("\ufffd" in piece for piece in pieces)


# -- log-probabilities ------------------------------------------------------------------------


@pytest.mark.parametrize("family", CHAT_FAMILIES)
def test_chat_logprobs_give_each_tokens_raw_bytes(
        client: openai.OpenAI, families: Families, family: str) -> None:
    choice = chat(client, families, family, logprobs=True, top_logprobs=2).choices[0]
    content = choice.logprobs.content
    assert content[-1].token == CHAT_STOP[family]
    assert b"".join(bytes(entry.bytes) for entry in content[:-1]) == TARGET.encode()
    first_byte = "日".encode()[:1]
    partial = next(entry for entry in content if bytes(entry.bytes) == first_byte)
    assert partial.token == "\ufffd"  # a part of a character is no text of its own
    for entry in content:
        assert len(entry.top_logprobs) == 2
        for alternative in entry.top_logprobs:
            assert alternative.logprob <= 0
            assert bytes(alternative.bytes).decode(errors="replace") == alternative.token


@pytest.mark.parametrize("family", FAMILIES)
def test_completion_logprobs_place_each_token_in_the_text(
        client: openai.OpenAI, families: Families, family: str) -> None:
    response = complete(client, families, family, logprobs=2)
    choice = response.choices[0]
    text, logprobs = choice.text, choice.logprobs
    tokens, offsets = logprobs.tokens, logprobs.text_offset
    assert len(tokens) == len(offsets) == len(logprobs.token_logprobs) \
        == response.usage.completion_tokens
    assert tokens[-1] == COMPLETION_STOP[family] and offsets[-1] == len(text)
    assert offsets == sorted(offsets) and offsets[0] == 0
    for token, offset in zip(tokens[:-1], offsets[:-1], strict=True):
        if "\ufffd" in token:  # part of a character: it starts at that character
            assert not text[offset].isascii()
        else:
            assert text[offset:offset + len(token)] == token
    # Each wide character is written byte by byte: a token per byte, none of them text.
    assert "".join(tokens).count("\ufffd") == sum(len(c.encode()) for c in TARGET
                                                  if not c.isascii())
    streamed = [c.choices[0].logprobs for c in
                complete(client, families, family, logprobs=2, stream=True)]
    assert [t for part in streamed for t in part.tokens] == tokens
    assert [o for part in streamed for o in part.text_offset] == offsets


# -- a vocabulary padded past the tokenizer's -------------------------------------------------


def test_ids_past_the_tokenizer_are_never_sampled(client: openai.OpenAI,
                                                  families: Families) -> None:
    """Qwen2's model prefers a padded id after the prompt, 3 to 1; it may not write it."""
    response = complete(client, families, "qwen2", prompt=PADDED_PROMPT, logprobs=5)
    choice = response.choices[0]
    assert (choice.text, choice.finish_reason) == (PADDED_REPLY, "stop")
    for alternatives in choice.logprobs.top_logprobs:
        assert "" not in alternatives  # a padded row has no text: it is not listed either
    sampled = complete(client, families, "qwen2", prompt=PADDED_PROMPT, temperature=1.0,
                       n=4, seed=3)
    assert [c.text for c in sampled.choices] == [PADDED_REPLY] * 4


# -- VAS and best-of-N ------------------------------------------------------------------------


@pytest.mark.parametrize("family", GUIDED)
def test_value_guidance_steers_byte_level_and_sentencepiece_families(
        client: openai.OpenAI, families: Families, family: str) -> None:
    def guided(beta: float | None, **body: Any) -> str:
        extra: dict[str, Any] = {"top_k": 5}
        if beta is not None:
            extra["value_guidance"] = [{"model": families.values[family], "beta": beta}]
        return str(complete(client, families, family, extra_body=extra,
                            **body).choices[0].text)

    for seed in (1, 2):
        sampled = {"temperature": 1.0, "seed": seed}
        assert guided(0.0, **sampled) == guided(None, **sampled)
    assert guided(None) == TARGET
    steered = guided(8.0)
    assert steered != TARGET and guided(8.0) == steered


SIMILAR_TO_TARGET = {"type": "text_similarity", "name": "close", "input": "{{sample.output_text}}",
                     "reference": TARGET, "evaluation_metric": "fuzzy_match"}


@pytest.mark.parametrize("family", GUIDED)
def test_best_of_n_picks_the_best_sample_on_byte_level_and_sentencepiece_families(
        client: openai.OpenAI, families: Families, family: str) -> None:
    body = {"best_of_n": {"n": 4, "reward": SIMILAR_TO_TARGET, "return_all": True},
            "top_k": 3}
    response = complete(client, families, family, temperature=2.0, seed=5, max_tokens=8,
                        extra_body=body)
    samples = response.model_extra["alignd_samples"]
    assert len(samples) == 4 and all(s["score"] is not None for s in samples)
    best = max(samples, key=lambda s: s["score"])
    assert response.choices[0].text == best["text"]
