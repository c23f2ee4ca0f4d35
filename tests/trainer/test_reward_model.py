"""Reward-model training on a tiny real model: learning, objectives, ensembles, resuming."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
import torch
from pydantic import ValidationError
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from modeling.heads import HEAD_FILE
from modeling.logprobs import IGNORE_INDEX
from services.methods import METHOD_PURPOSES, Method, RewardModelHyperparameters
from tests.trainer.test_supervised import Recorder, context
from trainer.checkpoint import latest_checkpoint
from trainer.context import JobStopped
from trainer.demo_world import build_tokenizer, make_problems, save_random_base_model
from trainer.demo_world.datasets import preference_rows, rating_rows
from trainer.methods import METHODS
from trainer.reward_data import collate_pairs, data_kind, tokenize_pair

# -- the method object ---------------------------------------------------------------------


def test_method_validates_a_reward_model_section() -> None:
    method = Method.model_validate({"type": "reward_model", "reward_model": {
        "hyperparameters": {"margin": 0.5, "ensemble_size": 3}}})
    assert isinstance(method.hyperparameters, RewardModelHyperparameters)
    assert method.hyperparameters.ensemble_size == 3 and method.hyperparameters.batch_size == 8
    assert Method.model_validate({"type": "reward_model"}).hyperparameters.margin is None
    assert METHOD_PURPOSES["reward_model"] == ("preference", "ratings", "fine-tune")


@pytest.mark.parametrize("method, where", [
    ({"type": "reward_model", "reward_model": {"hyperparameters": {"ensemble_size": 9}}},
     ("reward_model", "hyperparameters", "ensemble_size")),
    ({"type": "reward_model", "reward_model": {"hyperparameters": {"lora": {}}}},
     ("reward_model", "hyperparameters", "lora")),
    ({"type": "supervised", "reward_model": {}}, ()),
    ({"type": "dowsing"}, ("type",)),
])
def test_method_rejects_bad_reward_model_sections(method: dict, where: tuple) -> None:
    with pytest.raises(ValidationError) as error:
        Method.model_validate(method)
    assert error.value.errors()[0]["loc"] == where


def test_the_implicit_head_fills_its_defaults_and_the_classifier_leaves_them_null() -> None:
    implicit = RewardModelHyperparameters(head="implicit")
    assert (implicit.beta, implicit.reference, implicit.sft_coefficient) == (0.5, "none", 1.0)
    classifier = RewardModelHyperparameters()
    assert classifier.head == "classifier" and classifier.beta is None
    again = RewardModelHyperparameters.model_validate(implicit.model_dump())  # the trainer's read
    assert again == implicit


@pytest.mark.parametrize("hyperparameters, words", [
    ({"beta": 0.1}, "beta: only for head 'implicit'"),
    ({"reference": "base", "sft_coefficient": 0}, "reference, sft_coefficient: only for head"),
    ({"head": "implicit", "center_rewards_coefficient": 0.1}, "only for head 'classifier'"),
    ({"head": "implicit", "beta": 0}, "greater than 0"),
    ({"head": "implicit", "reference": "policy"}, "'none' or 'base'"),
    ({"head": "regressor"}, "'classifier' or 'implicit'"),
])
def test_head_specific_hyperparameters_are_refused_with_the_other_head(
    hyperparameters: dict, words: str
) -> None:
    with pytest.raises(ValidationError, match=words):
        RewardModelHyperparameters.model_validate(hyperparameters)


# -- data ------------------------------------------------------------------------------------


def preference(n: int, seed: int = 0) -> list[dict[str, Any]]:
    return preference_rows(make_problems(n, seed), random.Random(seed))


def ratings(n: int, seed: int = 0) -> list[dict[str, Any]]:
    return rating_rows(make_problems(n, seed), random.Random(seed))


def test_pairs_are_prompt_plus_response_right_padded() -> None:
    tokenizer = build_tokenizer()
    pair = tokenize_pair(tokenizer, {"prompt": "1+1=", "chosen": "2", "rejected": "1+1=3"}, 64)
    assert tokenizer.decode(pair.chosen_ids) == "<bos>1+1=2<eos>"
    batch = collate_pairs([pair], tokenizer.pad_token_id, torch.device("cpu"))
    assert batch.texts.input_ids.shape == (2, len(pair.rejected_ids))
    assert batch.texts.input_ids[0, len(pair.chosen_ids):].eq(tokenizer.pad_token_id).all()
    chat = {"input": {"messages": [{"role": "user", "content": "1+1="}]},
            "preferred_output": [{"role": "assistant", "content": "2"}],
            "non_preferred_output": [{"role": "assistant", "content": "3"}]}
    chat_pair = tokenize_pair(tokenizer, chat, 64)
    assert tokenizer.decode(chat_pair.chosen_ids).endswith("2<|end|>")


def test_the_response_is_the_completion_or_the_last_assistant_turn() -> None:
    tokenizer = build_tokenizer()
    pair = tokenize_pair(tokenizer, {"prompt": "1+1=", "chosen": "2", "rejected": "1+1=3"}, 64)
    batch = collate_pairs([pair], tokenizer.pad_token_id, torch.device("cpu"))
    labels = batch.labels  # (2, T)
    responses = [tokenizer.decode([t for t in row.tolist() if t != IGNORE_INDEX]) for row in labels]
    assert responses == ["2<eos>", "1+1=3<eos>"]
    chat = {"input": {"messages": [{"role": "user", "content": "1+1="},
                                   {"role": "assistant", "content": "2"},
                                   {"role": "user", "content": "and 2+2?"}]},
            "preferred_output": [{"role": "assistant", "content": "4"}],
            "non_preferred_output": [{"role": "assistant", "content": "5"}]}
    chat_pair = tokenize_pair(tokenizer, chat, 64)
    assert tokenizer.decode(chat_pair.chosen_ids[chat_pair.chosen_start:]) == "4<|end|>"
    assert chat_pair.rejected_start == chat_pair.chosen_start
    cut = tokenize_pair(tokenizer, {"prompt": "12+34=", "chosen": "46", "rejected": "4"}, 4)
    assert cut.chosen_ids == cut.chosen_ids[:4] and cut.chosen_start == 4  # only prompt fits


def test_data_kind_refuses_mixed_or_supervised_rows() -> None:
    assert data_kind(preference(2)) == "preference" and data_kind(ratings(2)) == "ratings"
    with pytest.raises(ValueError, match="one kind"):
        data_kind(preference(2) + ratings(2))
    with pytest.raises(ValueError, match="must be preference"):
        data_kind([{"prompt": "1+1=", "completion": "2"}])


# -- training ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def base_model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_random_base_model(tmp_path_factory.mktemp("base"), seed=0)


FAST = RewardModelHyperparameters(batch_size=8, learning_rate=3e-3, lr_scheduler="constant",
                                  n_epochs=3, max_seq_length=32, eval_every=6)


def train(workdir: Path, base: Path, hp: RewardModelHyperparameters, rows: list, **kw: Any):
    recorder = Recorder(stop_after_step=kw.pop("stop_after_step", None))
    ctx = context(workdir, base, hp, rows, recorder, **kw)  # type: ignore[arg-type]
    return METHODS["reward_model"](ctx), recorder


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


def test_preference_training_lowers_the_loss_and_changes_the_weights(
    base_model_path: Path, tmp_path: Path
) -> None:
    rows = preference(48)
    result, recorder = train(tmp_path, base_model_path, FAST, rows, validation_rows=preference(16, 1))
    assert sorted(recorder.metrics) == list(range(1, 19))  # 48 pairs * 3 epochs / 8
    losses = recorder.losses()
    assert mean(losses[-4:]) < 0.85 * mean(losses[:4]), losses
    first, last = recorder.metrics[1], recorder.metrics[18]
    assert set(first) >= {"train_loss", "learning_rate", "tokens_per_second", "pairwise_accuracy",
                          "mean_margin"}
    assert {"valid_loss", "valid_pairwise_accuracy", "valid_mean_margin"} <= set(last)
    assert last["valid_mean_margin"] > recorder.metrics[6]["valid_mean_margin"] > 0 or \
        last["valid_loss"] < recorder.metrics[6]["valid_loss"]
    assert result.kind == "reward_model" and result.metadata["objectives"] == ["reward"]

    tuned = AutoModelForSequenceClassification.from_pretrained(result.output_dir)
    assert tuned.config.num_labels == 1 and tuned.config.pad_token_id == 0
    base = AutoModelForCausalLM.from_pretrained(base_model_path).state_dict()
    tuned_weights = tuned.state_dict()
    shared = [name for name in base if name in tuned_weights]
    assert len(shared) == len(base) - 1  # all but lm_head
    assert all(not torch.equal(base[name], tuned_weights[name]) for name in shared)


def test_two_objectives_train_two_heads(base_model_path: Path, tmp_path: Path) -> None:
    hp = FAST.model_copy(update={"objective_weights": {"correctness": 1.0, "brevity": 0.2}})
    result, recorder = train(tmp_path, base_model_path, hp, ratings(48),
                             validation_rows=ratings(16, 1))
    losses = recorder.losses()
    assert mean(losses[-4:]) < 0.7 * mean(losses[:4]), losses
    last = recorder.metrics[18]
    assert {"valid_loss", "valid_mse_brevity", "valid_mse_correctness", "valid_corr_brevity",
            "valid_corr_correctness"} <= set(last)
    assert last["valid_corr_brevity"] > 0.5, last
    assert result.metadata["objectives"] == ["brevity", "correctness"]
    assert result.metadata["objective_weights"] == {"correctness": 1.0, "brevity": 0.2}
    tuned = AutoModelForSequenceClassification.from_pretrained(result.output_dir)
    assert tuned.config.num_labels == 2
    assert tuned.config.id2label == {0: "brevity", 1: "correctness"}


IMPLICIT = RewardModelHyperparameters.model_validate(
    {**FAST.model_dump(exclude={"beta", "reference", "sft_coefficient"}), "head": "implicit",
     "reference": "base", "learning_rate": 1e-3})


def test_the_implicit_head_trains_the_causal_lm_and_records_its_head(
    base_model_path: Path, tmp_path: Path
) -> None:
    result, recorder = train(tmp_path, base_model_path, IMPLICIT, preference(48),
                             validation_rows=preference(16, 1), base_model="tiny-base")
    losses = recorder.losses()
    assert mean(losses[-4:]) < 0.85 * mean(losses[:4]), losses
    first, last = recorder.metrics[1], recorder.metrics[18]
    assert {"pairwise_accuracy", "mean_margin", "chosen_nll", "train_loss"} <= set(first)
    assert {"valid_loss", "valid_pairwise_accuracy", "valid_mean_margin"} <= set(last)
    # The policy starts as its own reference: every implicit reward is 0 before the first step.
    assert first["mean_margin"] == 0.0 and first["pairwise_accuracy"] == 0.0
    margins = [recorder.metrics[step]["mean_margin"] for step in sorted(recorder.metrics)]
    assert mean(margins[-4:]) > mean(margins[:4]), margins
    head = {"head": "implicit", "beta": 0.5, "reduction": "sum",
            "reference": {"model": "tiny-base", "path": str(base_model_path)}}
    assert json.loads((result.output_dir / HEAD_FILE).read_text()) == head
    assert result.kind == "reward_model" and result.metadata["head"] == "implicit"
    assert result.metadata["reference"] == head["reference"]
    tuned = AutoModelForCausalLM.from_pretrained(result.output_dir).state_dict()
    base = AutoModelForCausalLM.from_pretrained(base_model_path).state_dict()
    assert tuned.keys() == base.keys()
    assert all(not torch.equal(base[name], tuned[name]) for name in base)


def test_the_implicit_head_refuses_ratings(base_model_path: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="preference rows only"):
        train(tmp_path, base_model_path, IMPLICIT, ratings(8))


def test_objective_weights_must_name_objectives_of_the_data(
    base_model_path: Path, tmp_path: Path
) -> None:
    hp = FAST.model_copy(update={"objective_weights": {"honesty": 1.0}})
    with pytest.raises(ValueError, match="honesty"):
        train(tmp_path, base_model_path, hp, ratings(8))


def test_an_ensemble_trains_members_from_their_own_seeds(
    base_model_path: Path, tmp_path: Path
) -> None:
    hp = FAST.model_copy(update={"ensemble_size": 2, "max_steps": 3})
    result, recorder = train(tmp_path, base_model_path, hp, preference(24))
    assert sorted(recorder.metrics) == list(range(1, 7))
    assert [recorder.metrics[s]["member"] for s in range(1, 7)] == [0, 0, 0, 1, 1, 1]
    assert result.kind == "reward_ensemble"
    manifest = json.loads((result.output_dir / "ensemble.json").read_text())
    assert manifest["members"] == ["member-0", "member-1"]
    assert manifest["objectives"] == ["reward"]
    first = load_file(result.output_dir / "member-0" / "model.safetensors")
    second = load_file(result.output_dir / "member-1" / "model.safetensors")
    assert not torch.equal(first["score.weight"], second["score.weight"])
    assert (result.output_dir / "member-1" / "tokenizer.json").is_file()


RESUMABLE = RewardModelHyperparameters(
    batch_size=3, gradient_accumulation_steps=2, n_epochs=2, learning_rate=3e-3,
    lr_scheduler="cosine", warmup_ratio=0.2, weight_decay=0.1, checkpoint_every=2,
    max_seq_length=32, margin=0.5, center_rewards_coefficient=0.01,
)


def weights(output: Path) -> dict[str, torch.Tensor]:
    found = sorted(output.rglob("model.safetensors"))
    return {f"{path.parent.name}/{name}": t for path in found for name, t in load_file(path).items()}


@pytest.mark.parametrize("ensemble_size, stop_after, head", [
    pytest.param(1, 3, "classifier", id="single"),
    pytest.param(2, 4, "classifier", id="ensemble-between-members", marks=pytest.mark.slow),
    pytest.param(2, 9, "classifier", id="ensemble-mid-member", marks=pytest.mark.slow),
    pytest.param(2, 7, "implicit", id="implicit-ensemble-mid-member"),
])
def test_a_stopped_and_resumed_run_ends_where_an_uninterrupted_one_does(
    base_model_path: Path, tmp_path: Path, ensemble_size: int, stop_after: int, head: str
) -> None:
    # 14 pairs, 6 a step, 2 epochs: 5 steps a member; checkpoints every 2 steps and at 5, 10.
    hp = RESUMABLE.model_copy(update={"ensemble_size": ensemble_size})
    if head == "implicit":
        hp = RewardModelHyperparameters.model_validate(
            {**hp.model_dump(exclude={"center_rewards_coefficient", "beta", "reference",
                                      "sft_coefficient"}), "head": "implicit",
             "reference": "base"})
    rows = preference(14)
    uninterrupted, run_a = train(tmp_path / "a", base_model_path, hp, rows)

    with pytest.raises(JobStopped):
        train(tmp_path / "b", base_model_path, hp, rows, stop_after_step=stop_after)
    checkpoint = latest_checkpoint(tmp_path / "b" / "checkpoints")
    assert checkpoint is not None
    resumed, run_b = train(tmp_path / "b", base_model_path, hp, rows, resume_from=checkpoint)

    step = int(checkpoint.name.removeprefix("step-"))
    assert run_b.logs[-1] == f"resumed from checkpoint at step {step}"
    assert sorted(run_b.metrics) == list(range(step + 1, 5 * ensemble_size + 1))
    for s in run_b.metrics:
        for name in ("train_loss", "learning_rate", "pairwise_accuracy"):
            assert run_b.metrics[s][name] == pytest.approx(run_a.metrics[s][name], rel=1e-5)
    assert resumed.trained_tokens == uninterrupted.trained_tokens
    expected, actual = weights(uninterrupted.output_dir), weights(resumed.output_dir)
    assert expected.keys() == actual.keys() and len(expected) > 0
    for name, tensor in expected.items():
        assert torch.allclose(actual[name], tensor, rtol=1e-5, atol=1e-6), name
