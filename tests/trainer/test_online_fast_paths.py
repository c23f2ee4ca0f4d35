"""Which forward an online job trains with and which engine samples its rollouts reach the job's
events, once, with the reason when a model is not one the fast paths reproduce: a Qwen2 job
takes the shared-prompt forward and the batch decoder; a GPT-2 job falls back to transformers'
forward and the torch engine, and says why."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from tests.trainer.test_online import method, train
from tests.trainer.test_supervised import Recorder, context
from trainer.online.policy import Policy

GPT2_REFUSAL = ("GPT2LMHeadModel is not one of the architectures the batch decoder reproduces "
                "(LlamaForCausalLM, Qwen2ForCausalLM, MistralForCausalLM, GemmaForCausalLM)")


@pytest.mark.parametrize("family, expected", [
    ("qwen2", "training forward: shared prompt (each distinct prompt run once, no padding)"),
    ("mistral", "training forward: shared prompt (each distinct prompt run once, no padding)"),
    ("gpt2", ("training forward: transformers' own on packed rows; the shared-prompt forward "
              f"does not take this model: {GPT2_REFUSAL}")),
])
def test_a_policy_says_which_forward_it_trains_with(family: str, expected: str,
                                                    family_models: dict[str, Path],
                                                    tmp_path: Path) -> None:
    recorder = Recorder()
    hp = method().hyperparameters
    Policy.load(context(tmp_path, family_models[family], hp, [], recorder), hp)
    assert recorder.logs == [expected]


@pytest.mark.parametrize("family, rollouts", [
    ("qwen2", "rollouts: the fast batch decoder (Qwen2ForCausalLM)"),
    ("gpt2", f"rollouts use the torch engine: {GPT2_REFUSAL}"),
])
def test_a_job_reports_its_fast_paths_once(family: str, rollouts: str,
                                           family_models: dict[str, Path], tmp_path: Path,
                                           reward_service: str) -> None:
    _, recorder = train(tmp_path, family_models[family], reward_service, max_steps=2,
                        prompts_per_step=2, group_size=2, max_new_tokens=4)
    assert sorted(recorder.metrics) == [1, 2]
    paths = [m for m in recorder.logs if m.startswith(("training forward", "rollouts"))]
    assert len(paths) == 2 and rollouts in paths, recorder.logs


@pytest.mark.parametrize("disable_dropout", [True, False])
def test_the_policy_trains_without_dropout_unless_asked(disable_dropout: bool,
                                                        family_models: dict[str, Path],
                                                        tmp_path: Path) -> None:
    """A GPT-2 checkpoint as the hub ships one (dropout 0.1, where the family world's has 0):
    off by default while training (as while sampling), kept with `disable_dropout: false`;
    the model stays in training mode either way."""
    folder = tmp_path / "gpt2"
    shutil.copytree(family_models["gpt2"], folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(
        {**config, "attn_pdrop": 0.1, "embd_pdrop": 0.1, "resid_pdrop": 0.1}))
    hp = method(disable_dropout=disable_dropout).hyperparameters
    policy = Policy.load(context(tmp_path, folder, hp, [], Recorder()), hp)
    rates = {module.p for module in policy.model.modules()
             if isinstance(module, torch.nn.Dropout)}
    assert rates == ({0.0} if disable_dropout else {0.1}) and policy.model.training
