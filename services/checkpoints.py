"""What a model folder holds, read from its JSON files and its weights' headers alone (no
torch): the api checks a checkpoint with it before declaring a base model and before a job
trains on one, so a folder alignd cannot load is refused with its reason instead of failing
later, deep in a worker.

A folder as `save_pretrained` writes it: config.json, generation_config.json, the tokenizer
(tokenizer_config.json with tokenizer.json, or a slow tokenizer's vocabulary files; the chat
template in chat_template.jinja since transformers 5, in tokenizer_config.json before), and
the weights (model.safetensors, or model.safetensors.index.json and its shards, or
pytorch_model.bin). A LoRA adapter's folder (adapter_config.json) is not a whole model.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SUPPORTED_ARCHITECTURES: dict[str, str] = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "mistral",
    "MixtralForCausalLM": "mixtral",
    "Qwen2ForCausalLM": "qwen2",
    "Qwen2MoeForCausalLM": "qwen2_moe",
    "Qwen3ForCausalLM": "qwen3",
    "Qwen3MoeForCausalLM": "qwen3_moe",
    "GemmaForCausalLM": "gemma",
    "Gemma2ForCausalLM": "gemma2",
    "Gemma3ForCausalLM": "gemma3_text",
    "GPT2LMHeadModel": "gpt2",
    "PhiForCausalLM": "phi",
    "Phi3ForCausalLM": "phi3",
    "Olmo2ForCausalLM": "olmo2",
    "GraniteForCausalLM": "granite",
    "SmolLM3ForCausalLM": "smollm3",
    "StableLmForCausalLM": "stablelm",
    "Starcoder2ForCausalLM": "starcoder2",
}
"""Architecture (config.json's `architectures`) → its `model_type`: the causal LMs that both of
alignd's engines load natively (transformers 5.19's AutoModelForCausalLM and vLLM 0.32), so a
declared model can be trained and served. A static list because the api never imports
transformers; tests/services/test_checkpoints.py checks it against both."""

CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "n_ctx", "max_sequence_length",
                "seq_length")
"""Where configs keep the context length (GPT-2's learned positions: n_positions)."""
VOCABULARIES = (("tokenizer.json",), ("tokenizer.model",), ("vocab.json", "merges.txt"),
                ("vocab.txt",))
"""A fast tokenizer's file, or a slow one's: any one of these sets loads."""
HEADER_LIMIT = 100 * 1024 * 1024
"""A safetensors header longer than this is not one (the format caps it there too)."""


@dataclass
class Checkpoint:
    """What the folder says about itself; `problems` are why alignd could not load it."""

    folder: Path
    architectures: list[str] = field(default_factory=list)
    model_type: str | None = None
    context_length: int | None = None
    """Positions the model has (None: its config does not say)."""
    chat_template: bool | None = None
    """None when there is no tokenizer to tell."""
    eos_token: str | None = None
    eos_token_ids: list[int] = field(default_factory=list)
    """config.json's and generation_config.json's eos ids together: where generation stops."""
    pad_token: str | None = None
    dtype: str | None = None
    custom_code: list[str] = field(default_factory=list)
    """`auto_map` entries ("AutoModelForCausalLM: modeling_x.XForCausalLM"): Python the folder
    ships, which loading runs (trust_remote_code)."""
    weights: str | None = None
    """How the weights are stored, e.g. "safetensors, 5 shards"."""
    adapter_of: str | None = None
    """A LoRA adapter's base model (adapter_config.json), when the folder is one."""
    problems: list[str] = field(default_factory=list)

    @property
    def supported(self) -> bool:
        if self.architectures:
            return any(name in SUPPORTED_ARCHITECTURES for name in self.architectures)
        return self.model_type in SUPPORTED_ARCHITECTURES.values()

    def summary(self) -> dict[str, Any]:
        """The facts as the registry keeps them and the admin API shows them."""
        return {"architectures": self.architectures, "model_type": self.model_type,
                "context_length": self.context_length, "chat_template": self.chat_template,
                "eos_token": self.eos_token, "eos_token_ids": self.eos_token_ids,
                "pad_token": self.pad_token, "dtype": self.dtype,
                "custom_code": self.custom_code, "weights": self.weights}


def inspect_checkpoint(folder: Path) -> Checkpoint:
    """Everything the folder's files say, and every reason it would not load."""
    found = Checkpoint(folder)
    if not folder.is_dir():
        found.problems.append(f"the folder {folder} does not exist")
        return found
    adapter = _json(found, "adapter_config.json")
    if adapter is not None:
        found.adapter_of = str(adapter.get("base_model_name_or_path") or "")
        found.problems.append(
            f"it is a LoRA adapter (adapter_config.json) of {found.adapter_of or 'a base model'}"
            ", not a whole model; declare its base model, or merge the adapter into it first")
        return found
    config = _json(found, "config.json", required=True)
    if config is not None:
        _read_config(found, config)
    generation = _json(found, "generation_config.json") or {}
    _add_eos_ids(found, generation.get("eos_token_id"))
    _read_tokenizer(found)
    _read_weights(found)
    return found


def _json(found: Checkpoint, name: str, required: bool = False) -> dict[str, Any] | None:
    path = found.folder / name
    if not path.is_file():
        if required:
            found.problems.append(f"{name} is missing")
        return None
    try:
        value = json.loads(path.read_bytes())
    except (ValueError, OSError) as exc:
        found.problems.append(f"{name} is not readable JSON ({exc})")
        return None
    if not isinstance(value, dict):
        found.problems.append(f"{name} must hold a JSON object, not {type(value).__name__}")
        return None
    return value


def _read_config(found: Checkpoint, config: dict[str, Any]) -> None:
    architectures = config.get("architectures") or []
    found.architectures = [str(name) for name in architectures if isinstance(name, str)]
    model_type = config.get("model_type")
    found.model_type = model_type if isinstance(model_type, str) else None
    found.context_length = next((config[key] for key in CONTEXT_KEYS
                                 if isinstance(config.get(key), int) and config[key] > 0), None)
    dtype = config.get("dtype") or config.get("torch_dtype")
    found.dtype = dtype if isinstance(dtype, str) else None
    _add_eos_ids(found, config.get("eos_token_id"))
    _add_custom_code(found, config.get("auto_map"))
    if not found.architectures and found.model_type is None:
        found.problems.append("config.json names neither its architectures nor its model_type")
    elif not found.supported:
        named = ", ".join(found.architectures) or f"model_type {found.model_type!r}"
        found.problems.append(
            f"architecture {named} is not one alignd's engines serve and train; supported: "
            f"{', '.join(SUPPORTED_ARCHITECTURES)}")


def _add_eos_ids(found: Checkpoint, value: Any) -> None:
    values = value if isinstance(value, list) else [value]
    ids = {i for i in values if isinstance(i, int) and not isinstance(i, bool)}
    found.eos_token_ids = sorted(ids | set(found.eos_token_ids))


def _add_custom_code(found: Checkpoint, auto_map: Any) -> None:
    if isinstance(auto_map, dict):
        found.custom_code += [f"{name}: {target}" for name, target in auto_map.items()]


def _token(value: Any) -> str | None:
    """A special token as tokenizer_config.json writes it: a string, or {"content": ...}."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) and value else None


def _read_tokenizer(found: Checkpoint) -> None:
    folder = found.folder
    config = _json(found, "tokenizer_config.json")
    if config is None and not (folder / "tokenizer_config.json").is_file():
        found.problems.append("tokenizer_config.json is missing (it names the tokenizer's "
                              "class and its special tokens)")
    if not any(all((folder / name).is_file() for name in names) for names in VOCABULARIES):
        found.problems.append(
            "the tokenizer's vocabulary is missing: expected tokenizer.json (or a slow "
            "tokenizer's tokenizer.model, vocab.json with merges.txt, or vocab.txt)")
    templates = bool((config or {}).get("chat_template")) or any(
        (folder / name).exists()
        for name in ("chat_template.jinja", "chat_template.json", "additional_chat_templates"))
    found.chat_template = True if templates else (False if config is not None else None)
    config = config or {}
    found.eos_token = _token(config.get("eos_token"))
    found.pad_token = _token(config.get("pad_token"))
    _add_custom_code(found, config.get("auto_map"))


def _read_weights(found: Checkpoint) -> None:
    shards = _weight_files(found)
    if shards is None:
        found.problems.append("no weights: expected model.safetensors, "
                              "model.safetensors.index.json with its shards, or "
                              "pytorch_model.bin")
        return
    for shard in shards:
        problem = _weights_problem(found.folder / shard, found)
        if problem:
            found.problems.append(problem)


def _weight_files(found: Checkpoint) -> list[str] | None:
    """The weights' files (a sharded checkpoint's from its index), safetensors first; None
    when there are none."""
    for index_name, single, kind in (
            ("model.safetensors.index.json", "model.safetensors", "safetensors"),
            ("pytorch_model.bin.index.json", "pytorch_model.bin", "pytorch_model.bin")):
        if (found.folder / index_name).is_file():
            shards = _shards(found, index_name)
            found.weights = f"{kind}, {len(shards)} shards"
            return shards
        if (found.folder / single).is_file():
            found.weights = kind
            return [single]
    return None


def _shards(found: Checkpoint, index_name: str) -> list[str]:
    index = _json(found, index_name) or {}
    weight_map = index.get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        found.problems.append(f"{index_name} has no weight_map naming its shards")
        return []
    return sorted({str(name) for name in weight_map.values()})


def _weights_problem(path: Path, found: Checkpoint) -> str | None:
    """Why the weights file would not load: missing, empty, or (safetensors) a header that is
    not one or describes more bytes than the file holds (a download cut short)."""
    if not path.is_file():
        return f"{path.name}, named in the weights' index, is missing"
    size = path.stat().st_size
    if size == 0:
        return f"{path.name} is empty"
    if path.suffix != ".safetensors":
        return None
    with path.open("rb") as handle:
        prefix = handle.read(8)
        length = struct.unpack("<Q", prefix)[0] if len(prefix) == 8 else size
        if length > min(size - 8, HEADER_LIMIT):
            return f"{path.name} is not a safetensors file (or is cut short)"
        try:
            header = json.loads(handle.read(length))
            ends = [int(entry["data_offsets"][1]) for name, entry in header.items()
                    if name != "__metadata__"]
            dtypes = {str(entry["dtype"]) for name, entry in header.items()
                      if name != "__metadata__"}
        except (ValueError, TypeError, KeyError, IndexError, AttributeError):
            return f"{path.name} has no readable safetensors header"
    if 8 + length + max(ends, default=0) > size:
        return (f"{path.name} is cut short: its header describes "
                f"{8 + length + max(ends, default=0)} bytes, the file has {size}")
    if found.dtype is None and len(dtypes) == 1:
        found.dtype = SAFETENSORS_DTYPES.get(dtypes.pop())
    return None


SAFETENSORS_DTYPES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}
