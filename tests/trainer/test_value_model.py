"""Value-model training (VAS) on a tiny real model, with rewards from a real reward service on
loopback: the method section, the data, learning, the saved format, resuming, failures."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from pydantic import ValidationError
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoModelForTokenClassification, AutoTokenizer

from modeling.heads import load_value_model
from modeling.sequences import encode_prompt
from services.methods import METHOD_PURPOSES, Method, ValueModelHyperparameters
from tests.trainer.test_supervised import Recorder, context
from trainer.checkpoint import latest_checkpoint
from trainer.context import JobStopped
from trainer.demo_world import build_tokenizer, make_problems
from trainer.methods import METHODS
from trainer.online.scoring import RewardServiceError, reward_item
from trainer.value_data import ROLLOUTS_FILE, Rollout, collate_values

HAS_AN_ANSWER_DIGIT = {
    "type": "python", "name": "digit",
    "source": "def grade(sample, item):\n"
              "    return float(any(c in sample['output_text'] for c in item['answer']))\n",
}
"""1 when the completion contains a digit of the row's answer: about one completion in three
of the random tiny model's, and readable from the text once it holds one."""

# -- the method object ---------------------------------------------------------------------


def value_section(**hyperparameters: Any) -> dict[str, Any]:
    return {"type": "value_model", "value_model": {"hyperparameters": hyperparameters}}


def test_method_validates_a_value_model_section() -> None:
    method = Method.model_validate(value_section(reward=HAS_AN_ANSWER_DIGIT, **{"lambda": 0.8}))
    hp = method.hyperparameters
    assert isinstance(hp, ValueModelHyperparameters)
    assert (hp.lambda_, hp.gamma, hp.samples_per_prompt, hp.top_k) == (0.8, 1.0, 4, 0)
    stored = method.model_dump(mode="json")["value_model"]["hyperparameters"]
    assert stored["lambda"] == 0.8 and "lambda_" not in stored
    assert Method.model_validate(method.model_dump(mode="json")) == method
    assert Method.model_validate(value_section(reward={"type": "x"})).hyperparameters.lambda_ \
        == 0.95
    assert METHOD_PURPOSES["value_model"] == ("prompts", "fine-tune")


@pytest.mark.parametrize("method, where", [
    ({"type": "value_model"}, ("value_model", "hyperparameters", "reward")),
    (value_section(), ("value_model", "hyperparameters", "reward")),
    (value_section(reward={"type": "x"}, **{"lambda": 1.5}),
     ("value_model", "hyperparameters", "lambda")),
    (value_section(reward={"type": "x"}, **{"lambda": -0.1}),
     ("value_model", "hyperparameters", "lambda")),
    (value_section(reward={"type": "x"}, lambda_=0.5),
     ("value_model", "hyperparameters", "lambda_")),
    (value_section(reward=["python"]), ("value_model", "hyperparameters", "reward")),
    (value_section(reward={"name": "no type"}), ("value_model", "hyperparameters", "reward")),
    (value_section(reward={"type": "x"}, gamma=1.1), ("value_model", "hyperparameters", "gamma")),
    (value_section(reward={"type": "x"}, max_new_tokens=64, max_seq_length=64),
     ("value_model", "hyperparameters")),
    ({"type": "supervised", "value_model": {}}, ()),
])
def test_method_rejects_bad_value_model_sections(method: dict, where: tuple) -> None:
    with pytest.raises(ValidationError) as error:
        Method.model_validate(method)
    assert error.value.errors()[0]["loc"] == where


# -- data ------------------------------------------------------------------------------------


def test_prompt_rows_encode_as_the_model_continues_them() -> None:
    tokenizer = build_tokenizer()
    assert tokenizer.decode(encode_prompt(tokenizer, {"prompt": "12+7="}, 64)) == "<bos>12+7="
    chat = {"messages": [{"role": "user", "content": "1+1="}], "answer": "2"}
    assert tokenizer.decode(encode_prompt(tokenizer, chat, 64)) == \
        "<bos><|user|>1+1=<|end|><|assistant|>"
    assert tokenizer.decode(encode_prompt(tokenizer, {"prompt": "12+7="}, 3)) == "+7="
    assert reward_item({"prompt": "1+1=", "answer": "2"}, "2") == \
        {"prompt": "1+1=", "response": "2", "item": {"prompt": "1+1=", "answer": "2"}}
    assert reward_item(chat, "2")["messages"][-1] == {"role": "assistant", "content": "2"}


def test_the_value_mask_spans_the_prompts_last_token_through_the_completion() -> None:
    rollouts = [Rollout(0, [1, 5, 6], [7, 2], "x", 1.0), Rollout(1, [1, 5], [7, 8, 9, 2], "y", 0.0)]
    batch = collate_values(rollouts, pad_id=0, device=torch.device("cpu"))
    assert batch.input_ids.tolist() == [[1, 5, 6, 7, 2, 0], [1, 5, 7, 8, 9, 2]]
    assert batch.value_mask.int().tolist() == [[0, 0, 1, 1, 1, 0], [0, 1, 1, 1, 1, 1]]
    assert batch.rewards.tolist() == [1.0, 0.0]


# -- training ----------------------------------------------------------------------------------


def prompt_rows(n: int, seed: int = 0) -> list[dict[str, Any]]:
    return [{"prompt": p.prompt, "answer": p.answer} for p in make_problems(n, seed)]


FAST = ValueModelHyperparameters(
    reward=HAS_AN_ANSWER_DIGIT, batch_size=32, gradient_accumulation_steps=2,
    learning_rate=1e-3, lr_scheduler="constant", n_epochs=16, max_seq_length=48,
    samples_per_prompt=4, max_new_tokens=20, eval_every=8, rollout_batch_size=32,
)
"""Every step reads all 64 rollouts of 16 prompts (in two micro-batches), so the loss is the
same fixed sum from step to step and must fall as the model fits it."""


def train(workdir: Path, base: Path, hp: ValueModelHyperparameters, rows: list, **kw: Any):
    recorder = Recorder(stop_after_step=kw.pop("stop_after_step", None))
    kw.setdefault("base_model", "tiny-base")
    ctx = context(workdir, base, hp, rows, recorder, **kw)  # type: ignore[arg-type]
    return METHODS["value_model"](ctx), recorder


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


def test_the_value_model_starts_at_zero_on_the_base_models_weights(base_model_path: Path) -> None:
    model = load_value_model(base_model_path, 0, torch.device("cpu"), zero_head=True)
    assert model.config.num_labels == 1
    assert model.score.weight.eq(0).all() and model.score.bias.eq(0).all()
    ids = torch.tensor([[1, 10, 17, 11, 20, 5]])
    assert model(input_ids=ids).logits.shape == (1, 6, 1)
    assert model(input_ids=ids).logits.eq(0).all()
    base = AutoModelForCausalLM.from_pretrained(base_model_path).state_dict()
    backbone = model.state_dict()
    assert all(torch.equal(base[name], backbone[name]) for name in base if name != "lm_head.weight")


def test_training_fits_the_rewards_and_saves_a_token_classifier(
    base_model_path: Path, tmp_path: Path, reward_service: str
) -> None:
    rows = prompt_rows(16)
    result, recorder = train(tmp_path, base_model_path, FAST, rows, reward_url=reward_service,
                             validation_rows=prompt_rows(4, seed=1))
    assert sorted(recorder.metrics) == list(range(1, 17))  # 64 rollouts * 16 epochs / 64
    first, last = recorder.metrics[1], recorder.metrics[16]
    assert {"value_loss", "explained_variance", "mean_reward", "learning_rate", "grad_norm",
            "epoch"} <= set(first)
    assert {"valid_value_loss", "valid_explained_variance"} <= set(recorder.metrics[8])
    assert {"valid_value_loss", "valid_explained_variance"} <= set(last)
    losses = [recorder.metrics[s]["value_loss"] for s in sorted(recorder.metrics)]
    assert mean(losses[-3:]) < 0.5 * mean(losses[:3]), losses
    assert first["explained_variance"] == 0.0  # V ≡ 0 explains nothing yet
    assert last["explained_variance"] > 0.5, last
    assert any(log.startswith("sampled 64 completions of 16 prompts") for log in recorder.logs)
    assert any(log.startswith("sampled 16 completions of 4 prompts") for log in recorder.logs)
    assert 0.0 < first["mean_reward"] < 1.0, first  # the grader told completions apart
    assert (tmp_path / "checkpoints" / ROLLOUTS_FILE).is_file()

    assert result.kind == "value_model"
    assert result.metadata == {"gamma": 1.0, "lambda": 0.95, "reward": HAS_AN_ANSWER_DIGIT,
                               "base_model": "tiny-base"}
    model = AutoModelForTokenClassification.from_pretrained(result.output_dir)
    assert model.config.num_labels == 1 and not model.score.weight.eq(0).all()
    tokenizer = AutoTokenizer.from_pretrained(result.output_dir)
    base_tokenizer = AutoTokenizer.from_pretrained(base_model_path)
    assert tokenizer.get_vocab() == base_tokenizer.get_vocab()
    assert (tokenizer.eos_token_id, tokenizer.pad_token_id) == (base_tokenizer.eos_token_id,
                                                                base_tokenizer.pad_token_id)


RESUMABLE = FAST.model_copy(update={
    "batch_size": 3, "gradient_accumulation_steps": 2, "n_epochs": 2, "learning_rate": 3e-3,
    "lr_scheduler": "cosine", "warmup_ratio": 0.2, "weight_decay": 0.1, "checkpoint_every": 2,
    "samples_per_prompt": 3, "max_new_tokens": 10, "lambda_": 0.9, "gamma": 0.99,
})


def test_a_stopped_and_resumed_run_ends_where_an_uninterrupted_one_does(
    base_model_path: Path, tmp_path: Path, reward_service: str
) -> None:
    rows = prompt_rows(5)  # 15 rollouts, 6 a step, 2 epochs: 5 steps, checkpoints at 2, 4, 5
    uninterrupted, run_a = train(tmp_path / "a", base_model_path, RESUMABLE, rows,
                                 reward_url=reward_service)
    with pytest.raises(JobStopped):
        train(tmp_path / "b", base_model_path, RESUMABLE, rows, reward_url=reward_service,
              stop_after_step=3)
    checkpoint = latest_checkpoint(tmp_path / "b" / "checkpoints")
    assert checkpoint is not None and checkpoint.name == "step-2"
    # No reward service this time: the resumed run trains on the rollouts saved before step 1.
    resumed, run_b = train(tmp_path / "b", base_model_path, RESUMABLE, rows,
                           reward_url="http://127.0.0.1:9", resume_from=checkpoint)

    assert run_b.logs[-1] == "resumed from checkpoint at step 2"
    assert sorted(run_b.metrics) == [3, 4, 5]
    for step in run_b.metrics:
        for name in ("value_loss", "explained_variance", "mean_reward", "learning_rate"):
            assert run_b.metrics[step][name] == pytest.approx(run_a.metrics[step][name],
                                                              rel=1e-5, abs=1e-7)
    assert resumed.trained_tokens == uninterrupted.trained_tokens
    expected = load_file(uninterrupted.output_dir / "model.safetensors")
    actual = load_file(resumed.output_dir / "model.safetensors")
    assert expected.keys() == actual.keys()
    for name, tensor in expected.items():
        # Float32 noise only: a wrong resume moves weights by about lr x grad (1e-3 and up),
        # while BLAS kernels may round differently with the allocator's state (seen: 1.2e-6).
        assert torch.allclose(actual[name], tensor, rtol=1e-4, atol=1e-5), name


def test_a_reward_service_that_is_down_or_refuses_fails_the_job_naming_it(
    base_model_path: Path, tmp_path: Path, reward_service: str
) -> None:
    hp = FAST.model_copy(update={"max_steps": 1, "samples_per_prompt": 1})
    with pytest.raises(RewardServiceError, match=r"at http://127\.0\.0\.1:9/v1/score is unavailable"):
        train(tmp_path / "down", base_model_path, hp, prompt_rows(2), reward_url="http://127.0.0.1:9")
    bad = hp.model_copy(update={"reward": {"type": "string_check", "name": "x", "operation": "regex",
                                           "input": "{{sample.output_text}}", "reference": "1"}})
    with pytest.raises(RewardServiceError, match=r"/v1/score answered 400: .*operation"):
        train(tmp_path / "bad", base_model_path, bad, prompt_rows(2), reward_url=reward_service)
    assert not (tmp_path / "bad" / "checkpoints" / ROLLOUTS_FILE).exists()
    failing = hp.model_copy(update={"reward": {
        "type": "python", "name": "boom", "source": "def grade(sample, item):\n    1 / 0\n"}})
    with pytest.raises(RewardServiceError, match=r"/v1/score could not score item 0: .*Zero"):
        train(tmp_path / "item", base_model_path, failing, prompt_rows(2),
              reward_url=reward_service)
    assert httpx.get(f"{reward_service}/healthz").status_code == 200


def test_a_reward_service_that_restarts_mid_job_is_waited_for(
        base_model_path: Path, tmp_path: Path, database_url: str) -> None:
    """The value-model job scored once, without retries: a reward service restarting while
    it sampled failed the job. Nothing listens for the first second and a half here."""
    from tests.trainer.conftest import LateRewardService

    late = LateRewardService(database_url).start_later()
    hp = FAST.model_copy(update={"max_steps": 1, "samples_per_prompt": 1})
    result, _ = train(tmp_path, base_model_path, hp, prompt_rows(2),
                      reward_url=late.url, reward_retry_seconds=60)
    assert late.started.is_set() and result.kind == "value_model"
