"""Build the demo world once per configuration: pretrained tiny model plus its datasets.

The world is a folder: ``base_model/`` (tokenizer and model, `from_pretrained`-loadable), the
JSONL files, and ``manifest.json``. The manifest is written last inside a scratch folder that is
then renamed into place, so a folder with a manifest is always complete; a build interrupted
half way leaves only scratch, and the next call builds again.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from trainer.demo_world.corpus import PretrainCorpus
from trainer.demo_world.datasets import SLIP_RATE, SPLIT_SIZES, demo_datasets, write_jsonl
from trainer.demo_world.model import TINY_LLAMA, build_model
from trainer.demo_world.pretrain import PretrainConfig, ProgressCallback, pretrain
from trainer.demo_world.tokenizer import build_tokenizer

DEMO_WORLD_VERSION = 1
"""Bump when the recipe changes in a way the config below does not show: it rebuilds caches."""

MANIFEST = "manifest.json"
BASE_MODEL_DIR = "base_model"
DATA_FILES = {name: f"{name}.jsonl" for name in SPLIT_SIZES}
ABANDONED_AFTER_S = 3600
"""A scratch folder this old belongs to a build that was killed: a build takes minutes."""


@dataclass(frozen=True)
class DemoWorld:
    root: Path
    base_model: Path
    """Tokenizer and pretrained tiny Llama, for AutoModelForCausalLM / AutoTokenizer."""
    supervised: Path
    """``{"prompt", "completion"}`` rows (every 4th as ``{"messages"}``): gold answers, but a
    carry or borrow is often forgotten (`SLIP_RATE`)."""
    supervised_validation: Path
    preference: Path
    """``{"prompt", "chosen", "rejected"}``: chosen is gold, rejected grades 0."""
    prompts: Path
    """``{"prompt", "answer"}`` for online RL and value training."""
    ratings: Path
    """``{"prompt", "response", "scores": {"correctness", "brevity"}}``."""
    eval_prompts: Path
    """``{"prompt", "answer"}`` held out from every training file and from pretraining."""

    @classmethod
    def at(cls, root: Path) -> DemoWorld:
        """The paths of a world folder (whether or not it is built)."""
        files = {name: root / filename for name, filename in DATA_FILES.items()}
        return cls(root=root, base_model=root / BASE_MODEL_DIR, **files)


def default_demo_root() -> Path:
    """``$ALIGND_DEMO_DIR`` if set, else ``~/.cache/alignd/demo``."""
    configured = os.environ.get("ALIGND_DEMO_DIR")
    return Path(configured) if configured else Path.home() / ".cache" / "alignd" / "demo"


def world_config(seed: int, pretrain_steps: int | None) -> dict[str, Any]:
    """Everything that decides a world's content; its hash keys the cache."""
    pretrain_config = _pretrain_config(pretrain_steps)
    corpus = asdict(PretrainCorpus(seed=seed, held_out=frozenset()))
    del corpus["held_out"]  # always the evaluation prompts, which the seed decides
    pretraining = asdict(pretrain_config)
    del pretraining["max_threads"]  # speed only, not content
    return {
        "version": DEMO_WORLD_VERSION,
        "seed": seed,
        "model": TINY_LLAMA,
        "pretraining": pretraining,
        "corpus": corpus,
        "rows": SPLIT_SIZES,
        "demonstrations": {"slip_rate": SLIP_RATE},
    }


def config_hash(config: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()


def build_demo_world(
    root: Path,
    *,
    seed: int = 0,
    pretrain_steps: int | None = None,
    progress: ProgressCallback | None = None,
) -> DemoWorld:
    """The demo world in ``root``, built unless ``root/manifest.json`` already matches.

    Deterministic from ``seed``; ``pretrain_steps`` (default `PretrainConfig.steps`) trades the
    base model's quality for time. ``progress(step, total, loss)`` follows the pretraining.
    """
    config = world_config(seed, pretrain_steps)
    return build_cached(Path(root), config, lambda folder: _build_into(
        folder, config, _pretrain_config(pretrain_steps), progress))


def build_cached(root: Path, config: dict[str, Any],
                 build_into: Callable[[Path], None]) -> DemoWorld:
    """The world folder ``root``, built by ``build_into(folder)`` unless its manifest's
    ``config_hash`` already matches ``config``. ``build_into`` writes a complete world into a
    new scratch folder, manifest last (`write_manifest`); the scratch is then renamed into
    place, so a folder with a matching manifest is always complete. Processes that want the
    same world at once (parallel test sessions, `alignd demo` beside them) build it once:
    the others wait on a lock beside it and then find it built."""
    if _is_built(root, config):
        return DemoWorld.at(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    with open(root.parent / f".{root.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, or the process dies
        if _is_built(root, config):
            return DemoWorld.at(root)
        if root.exists():
            _check_replaceable(root)  # before minutes of training, not after
        _remove_abandoned_scratch(root)
        scratch = root.parent / f".{root.name}.building-{uuid.uuid4().hex}"
        try:
            build_into(scratch)
            _publish(scratch, root, config)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    return DemoWorld.at(root)


def write_datasets(folder: Path, seed: int) -> dict[str, list[dict[str, Any]]]:
    """Every data file of a world into ``folder`` (created); returns the rows."""
    folder.mkdir(parents=True)
    datasets = demo_datasets(seed)
    for name, rows in datasets.items():
        write_jsonl(folder / DATA_FILES[name], rows)
    return datasets


def write_manifest(folder: Path, config: dict[str, Any], losses: list[float],
                   seconds: float) -> None:
    """The manifest, written last: the config and its hash, the data files' digests and how
    pretraining went."""
    tail = losses[-50:]
    manifest = {
        "config_hash": config_hash(config),
        "config": config,
        "files": {name: _sha256(folder / filename) for name, filename in DATA_FILES.items()},
        "pretraining": {
            "seconds": round(seconds, 1),
            "final_loss": round(sum(tail) / len(tail), 4) if tail else None,
        },
    }
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")


def _pretrain_config(pretrain_steps: int | None) -> PretrainConfig:
    return PretrainConfig() if pretrain_steps is None else PretrainConfig(steps=pretrain_steps)


def _is_built(root: Path, config: dict[str, Any]) -> bool:
    try:
        manifest = json.loads((root / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    return manifest.get("config_hash") == config_hash(config)


def _build_into(
    folder: Path,
    config: dict[str, Any],
    pretrain_config: PretrainConfig,
    progress: ProgressCallback | None,
) -> None:
    """Write a complete world into ``folder``, manifest last."""
    seed = config["seed"]
    datasets = write_datasets(folder, seed)
    started = time.perf_counter()
    tokenizer = build_tokenizer()
    model = build_model(tokenizer, seed=seed)
    held_out = frozenset(row["prompt"] for row in datasets["eval_prompts"])
    corpus = PretrainCorpus(seed=seed, held_out=held_out)
    losses = pretrain(
        model, tokenizer, corpus.batches(pretrain_config.batch_size), pretrain_config, progress
    )
    tokenizer.save_pretrained(folder / BASE_MODEL_DIR)
    model.save_pretrained(folder / BASE_MODEL_DIR)
    write_manifest(folder, config, losses, time.perf_counter() - started)


def _publish(scratch: Path, root: Path, config: dict[str, Any]) -> None:
    """Move a finished build to ``root``, replacing a stale or unfinished world there.

    If a concurrent build of the same config got there first, its world is kept and ours is
    dropped; the caller removes the scratch folder either way.
    """
    if root.exists():
        if _is_built(root, config):
            return
        _check_replaceable(root)
        stale = root.parent / f".{root.name}.stale-{uuid.uuid4().hex}"
        try:
            root.rename(stale)
        except FileNotFoundError:  # a concurrent build moved it first
            pass
        shutil.rmtree(stale, ignore_errors=True)
    try:
        scratch.rename(root)
    except OSError:
        if not _is_built(root, config):
            raise


def _check_replaceable(root: Path) -> None:
    """Refuse to delete a folder that holds anything but (part of) a demo world."""
    ours = {MANIFEST, BASE_MODEL_DIR, *DATA_FILES.values()}
    foreign = sorted(path.name for path in root.iterdir() if path.name not in ours)
    if foreign:
        raise ValueError(
            f"{root} is not a demo world folder (it holds {', '.join(foreign[:3])}); "
            "pass an empty or new folder"
        )


def _remove_abandoned_scratch(root: Path) -> None:
    """Delete scratch folders of builds that were killed (older than any build takes)."""
    for path in root.parent.glob(f".{root.name}.building-*"):
        if time.time() - path.stat().st_mtime > ABANDONED_AFTER_S:
            shutil.rmtree(path, ignore_errors=True)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
