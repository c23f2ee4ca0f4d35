"""Build one real-style family's world: its tokenizer and model as a user's checkpoint folder,
pretrained briefly on the demo task, beside the demo world's data files.

A family's world has the demo world's layout (`DemoWorld`: ``base_model/``, the JSONL files,
``manifest.json``) and is cached the same way (`build_cached`), one folder per family under
`default_real_root`. The rows are the demo world's; the pretraining texts are the demo
corpus's, each written the family's way: a chat turn through its own chat template, plain text
between its own bos and eos, and some prose between them.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from tokenizers import processors
from transformers import AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerFast
from transformers.utils.chat_template_utils import render_jinja_template

from trainer.demo_world.build import (
    BASE_MODEL_DIR,
    DemoWorld,
    build_cached,
    write_datasets,
    write_manifest,
)
from trainer.demo_world.corpus import PretrainCorpus
from trainer.demo_world.datasets import SLIP_RATE, SPLIT_SIZES
from trainer.demo_world.pretrain import PretrainConfig, ProgressCallback, pretrain
from trainer.real_world.families import FAMILIES, SIZES, Family, Size
from trainer.real_world.prose import sentences
from trainer.real_world.tokenizer import train_byte_level, train_sentencepiece

REAL_WORLD_VERSION = 2
"""Bump when the recipe changes in a way `family_config` does not show."""

PRETRAIN = PretrainConfig(steps=2500)
"""A family's pretraining, unless a build asks for another number of steps: the demo
model's recipe. After it, a pretrained tiny Qwen2 answered 10% of the held-out problems, and
150 supervised steps took it to 52%; after 1,500 steps (with tied embeddings), 0% and 2–7%."""


def default_real_root() -> Path:
    """``$ALIGND_REAL_DIR`` if set, else ``~/.cache/alignd/real``."""
    configured = os.environ.get("ALIGND_REAL_DIR")
    return Path(configured) if configured else Path.home() / ".cache" / "alignd" / "real"


def family_config(family: Family, size: Size, seed: int,
                  pretrain_steps: int | None) -> dict[str, Any]:
    """Everything that decides a family world's content; its hash keys the cache."""
    pretraining = asdict(_pretrain_config(pretrain_steps))
    del pretraining["max_threads"]
    return {"version": REAL_WORLD_VERSION, "family": family.name, "seed": seed,
            "size": asdict(size), "architecture": family.config(size.vocab, size).to_dict(),
            "pretraining": pretraining, "rows": SPLIT_SIZES,
            "demonstrations": {"slip_rate": SLIP_RATE}}


def build_family_world(root: Path, family: str, *, size: str = "tiny", seed: int = 0,
                       pretrain_steps: int | None = None,
                       progress: ProgressCallback | None = None) -> DemoWorld:
    """``family``'s world in ``root/family`` (``root/family-size`` for a size other than
    tiny), built unless its manifest matches: the checkpoint in ``base_model``, pretrained
    for ``pretrain_steps`` (default `PRETRAIN`'s; 0 leaves the random initialisation), and
    the demo world's data files."""
    spec, dims = FAMILIES[family], SIZES[size]
    config = family_config(spec, dims, seed, pretrain_steps)

    def build_into(folder: Path) -> None:
        datasets = write_datasets(folder, seed)
        started = time.perf_counter()
        tokenizer = build_tokenizer(spec, dims, seed)
        model = build_model(spec, tokenizer, dims, seed)
        held_out = frozenset(row["prompt"] for row in datasets["eval_prompts"])
        pretrain_config = _pretrain_config(pretrain_steps)
        texts = pretraining_texts(spec, tokenizer, PretrainCorpus(seed=seed, held_out=held_out))
        batches = batches_by_length(texts, pretrain_config.batch_size)
        losses = pretrain(model, tokenizer, batches, pretrain_config, progress)
        save_checkpoint(folder / BASE_MODEL_DIR, spec, tokenizer, model)
        write_manifest(folder, config, losses, time.perf_counter() - started)

    name = family if size == "tiny" else f"{family}-{size}"
    return build_cached(Path(root) / name, config, build_into)


def _pretrain_config(pretrain_steps: int | None) -> PretrainConfig:
    return PRETRAIN if pretrain_steps is None else PretrainConfig(steps=pretrain_steps)


def build_tokenizer(family: Family, size: Size = SIZES["tiny"],
                    seed: int = 0) -> PreTrainedTokenizerFast:
    """The family's tokenizer, trained on its own renderings of the demo corpus and prose."""
    corpus = PretrainCorpus(seed=seed, held_out=frozenset())
    texts = list(itertools.islice(_training_texts(family, corpus, size, seed),
                                 max(20_000, 3 * size.words)))
    if family.style == "byte_level":
        raw = train_byte_level(texts, size.vocab, family.special_tokens)
    else:
        raw = train_sentencepiece(texts, size.vocab, family.special_tokens,
                                  prepend_space=family.prepend_space)
    if family.add_bos:
        bos_id = raw.token_to_id(family.bos)
        raw.post_processor = processors.TemplateProcessing(
            single=f"{family.bos} $A", pair=f"{family.bos} $A $B",
            special_tokens=[(family.bos, bos_id)])
    named = {family.bos, family.eos, family.pad, family.unk}
    return PreTrainedTokenizerFast(
        tokenizer_object=raw, bos_token=family.bos, eos_token=family.eos,
        pad_token=family.pad, unk_token=family.unk,
        additional_special_tokens=[t for t in family.special_tokens if t not in named],
        chat_template=family.chat_template, clean_up_tokenization_spaces=False,
        model_max_length=family.config(size.vocab, size).max_position_embeddings)


def _training_texts(family: Family, corpus: PretrainCorpus, size: Size,
                    seed: int) -> Iterator[str]:
    """What the tokenizer learns its merges from: the arithmetic, as chat turns through the
    family's template (its markup, such as ``[INST]`` or ``assistant``, learned as ordinary
    text, its special tokens left out) and as plain text, and prose without its wide
    characters, which stay split into several tokens each."""
    prose = sentences(seed, wide=False, vocabulary=size.words)
    tokens = {"bos_token": "", "eos_token": ""}
    for prompt, continuation, as_chat in corpus.turns():
        if as_chat and family.chat_template is not None:
            turn = [[{"role": "user", "content": prompt},
                     {"role": "assistant", "content": continuation}]]
            rendered, _ = render_jinja_template(turn, chat_template=family.chat_template,
                                                **tokens)
            text = rendered[0]
            for special in family.special_tokens:
                text = text.replace(special, "\n")
            yield text
        else:
            yield f"{prompt}{continuation}"
        yield next(prose)


def build_model(family: Family, tokenizer: PreTrainedTokenizerFast, size: Size = SIZES["tiny"],
                seed: int = 0) -> PreTrainedModel:
    """A randomly initialised model of the family for ``tokenizer`` (the same for a seed),
    its generation config stopping at the family's stop tokens."""
    vocab = -(-len(tokenizer) // family.vocab_multiple) * family.vocab_multiple
    config = family.config(vocab, size)
    ids = {name: tokenizer.convert_tokens_to_ids(token) if token else None
           for name, token in (("bos", family.bos), ("eos", family.eos), ("pad", family.pad))}
    config.bos_token_id, config.eos_token_id, config.pad_token_id = (
        ids["bos"], ids["eos"], ids["pad"])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    generation = model.generation_config
    generation.bos_token_id, generation.pad_token_id = ids["bos"], ids["pad"]
    stops = [tokenizer.convert_tokens_to_ids(token) for token in family.stops]
    generation.eos_token_id = stops if len(stops) > 1 else stops[0]
    return model


def pretraining_texts(family: Family, tokenizer: PreTrainedTokenizerFast,
                      corpus: PretrainCorpus) -> Iterator[str]:
    """The corpus's texts the family's way (special tokens spelled out): chat turns through
    its template (plain text for a family without one) and plain text between its bos and
    eos. No prose: it did not change what a tiny model learnt of the task, and cost steps."""
    bos = tokenizer.bos_token if family.add_bos else ""
    for prompt, continuation, as_chat in corpus.turns():
        if as_chat and tokenizer.chat_template is not None:
            yield str(tokenizer.apply_chat_template(
                [{"role": "user", "content": prompt},
                 {"role": "assistant", "content": continuation}], tokenize=False))
        else:
            yield f"{bos}{prompt}{continuation}{tokenizer.eos_token}"


def batches_by_length(texts: Iterator[str], batch_size: int,
                      bucket_chars: int = 64) -> Iterator[list[str]]:
    """``texts`` cut into batches of similar length (within ``bucket_chars``), each batch
    taken in the order its bucket fills: a chat turn under a long template preamble is
    several times a plain text's length, and one of them pads a whole batch to its length."""
    buckets: dict[int, list[str]] = {}
    for text in texts:
        bucket = buckets.setdefault(len(text) // bucket_chars, [])
        bucket.append(text)
        if len(bucket) == batch_size:
            yield bucket[:]
            bucket.clear()


def save_checkpoint(folder: Path, family: Family, tokenizer: PreTrainedTokenizerFast,
                    model: PreTrainedModel) -> None:
    """The folder a user would have: tokenizer files with the chat template, config,
    generation config and safetensors weights (sharded, or bf16, as the family says)."""
    tokenizer.save_pretrained(folder)
    options = dict(family.save)
    dtype = options.pop("dtype", None)
    if dtype is not None:
        model = model.to(getattr(torch, dtype))
    model.save_pretrained(folder, **options)
