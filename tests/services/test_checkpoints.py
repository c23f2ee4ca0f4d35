"""Checkpoint inspection on the real-style family folders as `save_pretrained` wrote them, and on
copies broken the ways users' folders break; the supported architectures checked against what
transformers and vLLM actually load."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from services.checkpoints import SUPPORTED_ARCHITECTURES, inspect_checkpoint
from tests.conftest import CHAT_FAMILIES, FAMILIES


def copy_of(family_models: dict[str, Path], tmp_path: Path, name: str = "llama3") -> Path:
    return Path(shutil.copytree(family_models[name], tmp_path / name))


def edit_json(path: Path, change: Callable[[dict], None]) -> None:
    value = json.loads(path.read_text())
    change(value)
    path.write_text(json.dumps(value))


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_checkpoint_passes_with_its_facts(family_models: dict[str, Path],
                                                       family: str) -> None:
    checkpoint = inspect_checkpoint(family_models[family])
    assert checkpoint.problems == [] and checkpoint.supported and not checkpoint.custom_code
    assert checkpoint.chat_template is (family in CHAT_FAMILIES)
    assert checkpoint.context_length == (256 if family == "gpt2" else 512)
    assert checkpoint.eos_token_ids and checkpoint.eos_token
    shards = len(set(json.loads((family_models["qwen2"] / "model.safetensors.index.json")
                                .read_text())["weight_map"].values()))
    expected = {"qwen2": ("Qwen2ForCausalLM", f"safetensors, {shards} shards", "<|endoftext|>"),
                "llama3": ("LlamaForCausalLM", "safetensors", None),
                "mistral": ("MistralForCausalLM", "safetensors", None),
                "gemma": ("GemmaForCausalLM", "safetensors", "<pad>"),
                "gpt2": ("GPT2LMHeadModel", "safetensors", None)}[family]
    assert (checkpoint.architectures[0], checkpoint.weights, checkpoint.pad_token) == expected
    assert checkpoint.dtype == ("bfloat16" if family == "gemma" else "float32")


def test_llama3_stops_at_each_of_its_end_tokens(family_models: dict[str, Path]) -> None:
    checkpoint = inspect_checkpoint(family_models["llama3"])
    assert checkpoint.eos_token == "<|eot_id|>" and checkpoint.eos_token_ids == [1, 4, 5]


def test_an_older_folder_keeps_its_chat_template_in_tokenizer_config(
        family_models: dict[str, Path], tmp_path: Path) -> None:
    folder = copy_of(family_models, tmp_path)
    template = (folder / "chat_template.jinja").read_text()
    (folder / "chat_template.jinja").unlink()
    assert inspect_checkpoint(folder).chat_template is False
    edit_json(folder / "tokenizer_config.json", lambda c: c.update(chat_template=template))
    assert inspect_checkpoint(folder).chat_template is True


def remove(name: str) -> Callable[[Path], None]:
    return lambda folder: (folder / name).unlink()


def remove_a_shard(folder: Path) -> None:
    """Deletes the second shard the weights' index names (how many there are follows the
    model's size), leaving the index as it was."""
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1, shards
    (folder / shards[1]).unlink()


def found(reason: str | re.Pattern[str], message: str) -> bool:
    """Whether ``message`` gives ``reason``: a substring, or a pattern it matches."""
    return bool(reason.search(message)) if isinstance(reason, re.Pattern) else reason in message


def architecture(name: str, model_type: str) -> Callable[[Path], None]:
    return lambda folder: edit_json(folder / "config.json", lambda c: c.update(
        architectures=[name], model_type=model_type))


def truncate(name: str) -> Callable[[Path], None]:
    def cut(folder: Path) -> None:
        data = (folder / name).read_bytes()
        (folder / name).write_bytes(data[: len(data) // 2])
    return cut


@pytest.mark.parametrize("family, damage, reason", [
    ("llama3", remove("config.json"), "config.json is missing"),
    ("llama3", remove("model.safetensors"), "no weights: expected model.safetensors"),
    ("llama3", remove("tokenizer.json"), "the tokenizer's vocabulary is missing"),
    ("llama3", remove("tokenizer_config.json"), "tokenizer_config.json is missing"),
    ("qwen2", remove_a_shard,
     re.compile(r"model-00002-of-\d{5}\.safetensors, named in the weights' index, is missing")),
    ("gpt2", truncate("model.safetensors"), "model.safetensors is cut short"),
    ("gpt2", architecture("T5ForConditionalGeneration", "t5"),
     "architecture T5ForConditionalGeneration is not one alignd's engines serve and train"),
    ("mistral", lambda folder: (folder / "config.json").write_text("{not json"),
     "config.json is not readable JSON"),
])
def test_a_broken_copy_says_what_is_wrong(family_models: dict[str, Path], tmp_path: Path,
                                          family: str, damage: Callable[[Path], None],
                                          reason: str | re.Pattern[str]) -> None:
    folder = copy_of(family_models, tmp_path, family)
    damage(folder)
    problems = inspect_checkpoint(folder).problems
    assert any(found(reason, problem) for problem in problems), problems


def test_custom_code_is_reported_not_refused(family_models: dict[str, Path],
                                             tmp_path: Path) -> None:
    folder = copy_of(family_models, tmp_path)
    edit_json(folder / "config.json", lambda c: c.update(
        auto_map={"AutoModelForCausalLM": "modeling_mine.MineForCausalLM"}))
    checkpoint = inspect_checkpoint(folder)
    assert checkpoint.problems == []
    assert checkpoint.custom_code == ["AutoModelForCausalLM: modeling_mine.MineForCausalLM"]


def test_an_adapter_folder_is_not_a_whole_model(tmp_path: Path) -> None:
    (tmp_path / "adapter_config.json").write_text(json.dumps(
        {"base_model_name_or_path": "tiny-base", "peft_type": "LORA"}))
    (tmp_path / "adapter_model.safetensors").write_bytes(b"")
    checkpoint = inspect_checkpoint(tmp_path)
    assert checkpoint.adapter_of == "tiny-base"
    assert "LoRA adapter" in checkpoint.problems[0]


def test_a_missing_folder_says_so(tmp_path: Path) -> None:
    assert inspect_checkpoint(tmp_path / "nowhere").problems == [
        f"the folder {tmp_path / 'nowhere'} does not exist"]


def test_the_supported_architectures_are_ones_transformers_and_vllm_load() -> None:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    from vllm.model_executor.models import ModelRegistry

    served = set(ModelRegistry.get_supported_archs())
    for name, model_type in SUPPORTED_ARCHITECTURES.items():
        assert MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(model_type) == name, name
        assert name in served, name
