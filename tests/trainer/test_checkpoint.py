"""Checkpoints restore the whole training state and are never picked half-written."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, get_scheduler

from trainer.checkpoint import (
    TrainingState,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    model_dir,
    prune_checkpoints,
    read_training_state,
    save_checkpoint,
)
from trainer.demo_world import save_random_base_model


@pytest.fixture(scope="module")
def base_model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_random_base_model(tmp_path_factory.mktemp("base"), seed=0)


def trained_components(path: Path):
    """A model, optimizer and scheduler that have taken two steps, so all have state."""
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scheduler = get_scheduler("cosine", optimizer, num_warmup_steps=1, num_training_steps=10)
    input_ids = torch.tensor([[1, 8, 9, 17, 14, 20, 8, 16, 2]])
    for _ in range(2):
        model(input_ids=input_ids, labels=input_ids).loss.backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
    return model, optimizer, scheduler


def fresh_components(path: Path):
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scheduler = get_scheduler("cosine", optimizer, num_warmup_steps=1, num_training_steps=10)
    return model, optimizer, scheduler


STATE = TrainingState(step=2, epoch=1, index_in_epoch=5, trained_tokens=18)


def test_round_trip_restores_model_optimizer_scheduler_rng_and_position(
    base_model_path: Path, tmp_path: Path
) -> None:
    model, optimizer, scheduler = trained_components(base_model_path)
    tokenizer = AutoTokenizer.from_pretrained(base_model_path)
    path = save_checkpoint(tmp_path, STATE, model, optimizer, scheduler, tokenizer=tokenizer)
    draws = (random.random(), np.random.rand(), torch.rand(3))
    random.random(), np.random.rand(), torch.rand(3)  # move every generator on

    restored_model, restored_optimizer, restored_scheduler = fresh_components(model_dir(path))
    assert load_checkpoint(path, restored_optimizer, restored_scheduler) == STATE

    assert (random.random(), np.random.rand()) == draws[:2]
    assert torch.equal(torch.rand(3), draws[2])
    for name, tensor in model.state_dict().items():
        assert torch.equal(restored_model.state_dict()[name], tensor), name
    assert restored_scheduler.get_last_lr() == scheduler.get_last_lr()
    assert restored_scheduler.last_epoch == scheduler.last_epoch
    saved, loaded = optimizer.state_dict(), restored_optimizer.state_dict()
    assert saved["param_groups"] == loaded["param_groups"]
    for index, param_state in saved["state"].items():
        for key, value in param_state.items():
            assert torch.equal(loaded["state"][index][key], value), (index, key)
    assert AutoTokenizer.from_pretrained(model_dir(path)).chat_template == tokenizer.chat_template


def test_checkpoint_is_named_by_step_and_leaves_no_temporary(
    base_model_path: Path, tmp_path: Path
) -> None:
    model, optimizer, scheduler = trained_components(base_model_path)
    path = save_checkpoint(tmp_path, STATE, model, optimizer, scheduler)
    assert path == tmp_path / "step-2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-2"]
    assert read_training_state(path) == STATE


def test_a_write_that_dies_midway_is_never_picked(
    base_model_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, optimizer, scheduler = trained_components(base_model_path)
    first = save_checkpoint(tmp_path, STATE, model, optimizer, scheduler)

    def crash(*args, **kwargs) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    later = TrainingState(step=4, epoch=1, index_in_epoch=9, trained_tokens=30)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(tmp_path, later, model, optimizer, scheduler)
    assert (tmp_path / "step-4.tmp").is_dir()
    assert latest_checkpoint(tmp_path) == first

    monkeypatch.undo()  # the retried write replaces the stale temporary
    assert save_checkpoint(tmp_path, later, model, optimizer, scheduler) == tmp_path / "step-4"
    assert not (tmp_path / "step-4.tmp").exists()
    assert latest_checkpoint(tmp_path) == tmp_path / "step-4"


def make_fake_checkpoint(root: Path, name: str, complete: bool = True) -> Path:
    path = root / name
    path.mkdir(parents=True)
    if complete:
        (path / "trainer_state.json").write_text("{}")
    return path


def test_latest_checkpoint_orders_steps_numerically_and_skips_incomplete(tmp_path: Path) -> None:
    assert latest_checkpoint(tmp_path / "missing") is None
    assert latest_checkpoint(tmp_path) is None
    for name in ("step-9", "step-10", "step-2"):
        make_fake_checkpoint(tmp_path, name)
    make_fake_checkpoint(tmp_path, "step-11.tmp")
    make_fake_checkpoint(tmp_path, "step-12", complete=False)
    make_fake_checkpoint(tmp_path, "other-13")
    assert latest_checkpoint(tmp_path) == tmp_path / "step-10"
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-2", "step-9", "step-10"]


def test_prune_keeps_the_newest(tmp_path: Path) -> None:
    for step in (1, 2, 3, 10):
        make_fake_checkpoint(tmp_path, f"step-{step}")
    deleted = prune_checkpoints(tmp_path, keep=2)
    assert [p.name for p in deleted] == ["step-1", "step-2"]
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-3", "step-10"]
