"""Every job type on every real-style family (`trainer.real_world`): byte-level BPE tokenizers,
the families' chat templates and stop tokens, Qwen2/Llama 3/Mistral/Gemma/GPT-2 weights saved
as a user's folder holds them (sharded, bf16). Runs are a few steps each, on randomly
initialised checkpoints: what is checked is that each method runs, trains and writes a model
that loads, not that it learns (tests/trainer/test_families_learn.py checks that)."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from services.methods import Method
from tests.conftest import CHAT_FAMILIES, FAMILIES
from tests.trainer.test_online import DIGIT_SHARE
from tests.trainer.test_online import train as train_online
from tests.trainer.test_supervised import Recorder, context
from trainer.demo_world import make_problems
from trainer.demo_world.datasets import preference_rows, rating_rows
from trainer.methods import METHODS

pytestmark = pytest.mark.slow

ALGORITHMS = {"qwen2": ("grpo", "ppo"), "llama3": ("rloo", "superhf"),
              "mistral": ("remax", "ngrpo"), "gemma": ("grpo", "rloo"),
              "gpt2": ("grpo", "remax")}
"""The online algorithms run on each family: every algorithm on some family, two on each
(every algorithm on the demo Llama: tests/trainer/test_online.py)."""

DPO_LOSSES = {"qwen2": "sigmoid", "llama3": "ipo", "mistral": "conservative",
              "gemma": "tdpo", "gpt2": "sigmoid"}
"""Every DPO loss on some family (all of them on the demo Llama: tests/trainer/test_dpo.py)."""


def supervised_rows(family: str, n: int = 24) -> list[dict[str, Any]]:
    """Arithmetic demonstrations, every other one as a chat (with a system turn where the
    template has one) for the families with a chat template."""
    rows: list[dict[str, Any]] = []
    for index, problem in enumerate(make_problems(n, seed=3)):
        if family in CHAT_FAMILIES and index % 2:
            system = [] if family == "gemma" else [{"role": "system", "content": "Be brief."}]
            rows.append({"messages": [*system, {"role": "user", "content": problem.prompt},
                                      {"role": "assistant", "content": problem.answer}]})
        else:
            rows.append({"prompt": problem.prompt, "completion": problem.answer})
    return rows


def prompt_rows(family: str, n: int = 16) -> list[dict[str, Any]]:
    """Arithmetic prompts with their answers, as chats for the chat families."""
    rows = []
    for problem in make_problems(n, seed=5):
        if family in CHAT_FAMILIES:
            rows.append({"messages": [{"role": "user", "content": problem.prompt}],
                         "answer": problem.answer})
        else:
            rows.append({"prompt": problem.prompt, "answer": problem.answer})
    return rows


def hyperparameters(method_type: str, **settings: Any) -> Any:
    return Method.model_validate({"type": method_type, method_type: {
        "hyperparameters": settings}}).hyperparameters


def run(method_type: str, workdir: Path, base: Path, hp: Any, rows: list[dict[str, Any]],
        **overrides: Any) -> tuple[Any, Recorder]:
    recorder = Recorder()
    ctx = context(workdir, base, hp, rows, recorder, **overrides)
    return METHODS[method_type](ctx), recorder


def finite_losses(recorder: Recorder, name: str = "train_loss") -> list[float]:
    values = [recorder.metrics[step][name] for step in sorted(recorder.metrics)
              if name in recorder.metrics[step]]
    assert values and all(torch.isfinite(torch.tensor(values))), values
    return values


@pytest.mark.parametrize("family", FAMILIES)
def test_supervised_full_and_lora_train_and_save_a_loadable_model(
        family: str, family_models: dict[str, Path], tmp_path: Path) -> None:
    base = family_models[family]
    rows = supervised_rows(family)
    hp = hyperparameters("supervised", batch_size=8, max_steps=3, learning_rate=1e-3,
                         max_seq_length=128, checkpoint_every=100)
    result, recorder = run("supervised", tmp_path / "full", base, hp, rows)
    finite_losses(recorder)
    tokenizer = AutoTokenizer.from_pretrained(result.output_dir)
    assert tokenizer.chat_template == AutoTokenizer.from_pretrained(base).chat_template
    model = AutoModelForCausalLM.from_pretrained(result.output_dir)
    original = AutoModelForCausalLM.from_pretrained(base)
    assert model.generation_config.eos_token_id == original.generation_config.eos_token_id
    assert type(model) is type(original)

    lora = hyperparameters("supervised", batch_size=8, max_steps=2, learning_rate=1e-3,
                           max_seq_length=128, lora={"r": 4}, checkpoint_every=100)
    adapter, recorder = run("supervised", tmp_path / "lora", base, lora, rows)
    finite_losses(recorder)
    config = json.loads((adapter.output_dir / "adapter_config.json").read_text())
    expected = {"gpt2": {"c_attn"}}.get(family, {"q_proj", "v_proj"})
    assert set(config["target_modules"]) == expected, config["target_modules"]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("head", ["classifier", "implicit"])
def test_reward_models_train_on_preferences(family: str, head: str,
                                            family_models: dict[str, Path],
                                            tmp_path: Path) -> None:
    rows = preference_rows(make_problems(24, seed=7), random.Random(7))
    hp = hyperparameters("reward_model", batch_size=8, max_steps=2, learning_rate=1e-3,
                         head=head, checkpoint_every=100)
    result, recorder = run("reward_model", tmp_path, family_models[family], hp, rows)
    finite_losses(recorder)
    assert result.kind == "reward_model"


@pytest.mark.parametrize("family", FAMILIES)
def test_a_ratings_reward_model_and_dpo_train(family: str, family_models: dict[str, Path],
                                              tmp_path: Path) -> None:
    base = family_models[family]
    ratings = rating_rows(make_problems(16, seed=8), random.Random(8))
    hp = hyperparameters("reward_model", batch_size=8, max_steps=2, learning_rate=1e-3,
                         checkpoint_every=100)
    _, recorder = run("reward_model", tmp_path / "rm", base, hp, ratings)
    finite_losses(recorder)

    pairs = preference_rows(make_problems(24, seed=9), random.Random(9))
    dpo = hyperparameters("dpo", batch_size=8, max_steps=2, learning_rate=1e-3,
                          loss=DPO_LOSSES[family], checkpoint_every=100)
    result, recorder = run("dpo", tmp_path / "dpo", base, dpo, pairs)
    finite_losses(recorder, "loss")
    AutoModelForCausalLM.from_pretrained(result.output_dir)


@pytest.mark.parametrize("family", FAMILIES)
def test_online_algorithms_and_a_value_model_train(family: str, family_models: dict[str, Path],
                                                   tmp_path: Path, reward_service: str) -> None:
    base = family_models[family]
    for algorithm in ALGORITHMS[family]:
        result, recorder = train_online(tmp_path / algorithm, base, reward_service,
                                        rows=prompt_rows(family), algorithm=algorithm,
                                        max_steps=2, prompts_per_step=4, group_size=4)
        assert sorted(recorder.metrics) == [1, 2], algorithm
        finite_losses(recorder, "reward_mean")
        AutoModelForCausalLM.from_pretrained(result.output_dir)

    hp = hyperparameters("value_model", reward=DIGIT_SHARE, batch_size=16, max_steps=2,
                         learning_rate=1e-3, samples_per_prompt=2, max_new_tokens=8,
                         rollout_batch_size=16, checkpoint_every=100)
    result, recorder = run("value_model", tmp_path / "value", base, hp, prompt_rows(family),
                           reward_url=reward_service, base_model=f"{family}-base")
    finite_losses(recorder, "value_loss")
    assert result.kind == "value_model"


def test_a_default_max_seq_length_past_the_context_is_cut_to_it(
        family_models: dict[str, Path]) -> None:
    from trainer.runner import fit_to_context

    default = hyperparameters("supervised")
    assert default.max_seq_length > 256
    fitted, note = fit_to_context(default, family_models["gpt2"])  # 256 learned positions
    assert fitted.max_seq_length == 256 and "context of 256 positions" in str(note)
    same, note = fit_to_context(default, family_models["qwen2"])  # 512
    assert same is default and note is None
