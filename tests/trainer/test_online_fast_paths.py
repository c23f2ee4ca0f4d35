"""Which forward an online job trains with and which engine samples its rollouts reach the job's
events, once, with the reason when a model is not one the fast paths reproduce: a Qwen2 job
takes the shared-prompt forward and the batch decoder; a GPT-2 job falls back to transformers'
forward and the torch engine, and says why."""

from __future__ import annotations

from pathlib import Path

import pytest

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
