"""Resumable training state on disk, written atomically.

A checkpoint is a directory `step-N` holding everything needed to continue exactly where
training stopped:

    step-N/
      model/               save_pretrained output (a LoRA run: the adapter only) + tokenizer
      optimizer.pt         optimizer.state_dict()
      scheduler.pt         lr_scheduler.state_dict()
      rng_state.pt         python, numpy and torch (and cuda) generator states
      trainer_state.json   TrainingState: step, data position, trained tokens
      loop_state.json      what else the method keeps between steps (online RL: the KL
                           controller, running reward statistics), when it keeps anything

It is written under `step-N.tmp` and renamed into place once complete, so a directory named
`step-N` is always whole and `latest_checkpoint` never picks a half-written one.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol, cast

import numpy as np
import torch
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

MODEL_DIR = "model"
STATE_FILE = "trainer_state.json"
LOOP_STATE_FILE = "loop_state.json"
_CHECKPOINT_NAME = re.compile(r"^step-(\d+)$")


class SavesPretrained(Protocol):
    """A transformers model, a peft model (saves its adapter only) or a tokenizer."""

    def save_pretrained(self, save_directory: str, **kwargs: Any) -> Any: ...


@dataclass(frozen=True)
class TrainingState:
    """Where a run is: enough, with the seed, to rebuild the data stream from this point."""

    step: int
    """Optimizer steps completed."""
    epoch: int
    """Epoch of the next training row (0-based)."""
    index_in_epoch: int
    """Position of the next training row in that epoch's shuffled order."""
    trained_tokens: int
    """Tokens the model has been trained on so far."""

    def rows_consumed(self, n_rows: int) -> int:
        """Position in the row stream: rows trained on so far, over all epochs."""
        return self.epoch * n_rows + self.index_in_epoch

    def after_step(self, n_rows: int, rows: int, tokens: int) -> TrainingState:
        """The state after one more optimizer step that read `rows` rows and `tokens` tokens."""
        position = self.rows_consumed(n_rows) + rows
        return TrainingState(
            step=self.step + 1,
            epoch=position // n_rows,
            index_in_epoch=position % n_rows,
            trained_tokens=self.trained_tokens + tokens,
        )


def checkpoint_dir(root: Path, step: int) -> Path:
    return root / f"step-{step}"


def model_dir(checkpoint: Path) -> Path:
    """The checkpoint's model folder: loadable with from_pretrained (or as a peft adapter)."""
    return checkpoint / MODEL_DIR


def _rng_state() -> dict[str, Any]:
    numpy_state = cast(tuple[Any, ...], np.random.get_state(legacy=True))
    state: dict[str, Any] = {
        "python": random.getstate(),
        # A plain tuple of lists, so that torch.load(weights_only=True) reads it back.
        "numpy": (numpy_state[0], numpy_state[1].tolist(), *numpy_state[2:]),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _restore_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    root: Path,
    state: TrainingState,
    model: SavesPretrained,
    optimizer: Optimizer,
    scheduler: LRScheduler,
    tokenizer: SavesPretrained | None = None,
    loop_state: dict[str, Any] | None = None,
    write_more: Callable[[Path], None] | None = None,
) -> Path:
    """Write `root/step-{state.step}` atomically and return its path; ``write_more`` adds
    what else the method keeps (e.g. a critic) into the folder before it is renamed."""
    final = checkpoint_dir(root, state.step)
    partial = final.with_name(final.name + ".tmp")
    shutil.rmtree(partial, ignore_errors=True)  # left by a run that died mid-write
    partial.mkdir(parents=True)
    model.save_pretrained(str(partial / MODEL_DIR))
    if tokenizer is not None:
        tokenizer.save_pretrained(str(partial / MODEL_DIR))
    torch.save(optimizer.state_dict(), partial / "optimizer.pt")
    torch.save(scheduler.state_dict(), partial / "scheduler.pt")
    torch.save(_rng_state(), partial / "rng_state.pt")
    (partial / STATE_FILE).write_text(json.dumps(asdict(state), indent=2))
    if loop_state:
        (partial / LOOP_STATE_FILE).write_text(json.dumps(loop_state, indent=2))
    if write_more is not None:
        write_more(partial)
    if final.exists():  # the same step written again after a crash that followed the rename
        shutil.rmtree(final)
    os.replace(partial, final)
    return final


def read_loop_state(checkpoint: Path) -> dict[str, Any]:
    """What `save_checkpoint` kept as ``loop_state`` ({} when nothing)."""
    path = checkpoint / LOOP_STATE_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def read_training_state(checkpoint: Path) -> TrainingState:
    return TrainingState(**json.loads((checkpoint / STATE_FILE).read_text()))


def load_checkpoint(
    checkpoint: Path, optimizer: Optimizer, scheduler: LRScheduler
) -> TrainingState:
    """Restore optimizer, scheduler and RNG states in place; return the data position.

    Model weights are not touched here: build the model from `model_dir(checkpoint)` before
    creating the optimizer, so parameters and optimizer state line up.
    """
    optimizer.load_state_dict(torch.load(checkpoint / "optimizer.pt", weights_only=True))
    scheduler.load_state_dict(torch.load(checkpoint / "scheduler.pt", weights_only=True))
    _restore_rng_state(torch.load(checkpoint / "rng_state.pt", weights_only=True))
    return read_training_state(checkpoint)


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints under `root`, oldest step first; `.tmp` directories are skipped."""
    if not root.is_dir():
        return []
    found: list[tuple[int, Path]] = []
    for path in root.iterdir():
        match = _CHECKPOINT_NAME.match(path.name)
        if match and path.is_dir() and (path / STATE_FILE).is_file():
            found.append((int(match.group(1)), path))
    return [path for _, path in sorted(found)]


def latest_checkpoint(root: Path) -> Path | None:
    """The complete checkpoint with the highest step, or None when there is none."""
    checkpoints = list_checkpoints(root)
    return checkpoints[-1] if checkpoints else None


def prune_checkpoints(root: Path, keep: int = 2) -> list[Path]:
    """Delete all but the `keep` newest complete checkpoints; return the deleted paths."""
    stale = list_checkpoints(root)[:-keep] if keep > 0 else list_checkpoints(root)
    for path in stale:
        shutil.rmtree(path)
    return stale
