"""`dpo` jobs on a tiny real model: learning, the cached reference log-probabilities, the LoRA
reference, TDPO, resuming, and truncation flagged."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from modeling.logprobs import response_logps
from services.methods import Method
from tests.trainer.test_supervised import Recorder, context
from trainer.context import JobStopped, TrainingResult
from trainer.methods.dpo import REFERENCE_FILE, DpoTrainer
from trainer.reward_data import collate_pairs, tokenize_pair


def pairs(n: int) -> list[dict[str, Any]]:
    """The sum as chosen, a letter as rejected: easy to learn to prefer."""
    return [{"prompt": f"{i}+{i % 5}=", "chosen": str(i + i % 5), "rejected": "xq"}
            for i in range(n)]


def hyperparameters(**overrides: Any) -> Any:
    settings = {"batch_size": 8, "learning_rate": 1e-3, "n_epochs": 3, "beta": 0.5,
                "checkpoint_every": 100, **overrides}
    return Method.model_validate({"type": "dpo", "dpo": {"hyperparameters": settings}}
                                 ).hyperparameters


def train(workdir: Path, base: Path, recorder: Recorder | None = None,
          rows: list[dict[str, Any]] | None = None, **overrides: Any) -> tuple[TrainingResult,
                                                                              Recorder]:
    recorder = recorder or Recorder()
    ctx = context(workdir, base, hyperparameters(**overrides), rows or pairs(32), recorder,
                  validation_rows=pairs(40)[32:])
    return DpoTrainer(ctx).train(), recorder


def base_logps(base: Path, rows: list[dict[str, Any]]) -> torch.Tensor:
    """(N, 2) Σ log π_base of each pair's chosen and rejected response, by a fresh forward."""
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base).eval()
    batch = collate_pairs([tokenize_pair(tokenizer, row, 512) for row in rows], 0,
                          torch.device("cpu"))
    with torch.no_grad():
        logits = model(input_ids=batch.texts.input_ids,
                       attention_mask=batch.texts.attention_mask).logits
    return response_logps(logits, batch.labels).view(2, -1).T


@pytest.mark.parametrize("loss", ["sigmoid", "ipo", "conservative", "tdpo"])
def test_each_loss_learns_to_prefer_the_chosen_responses(base_model_path: Path, tmp_path: Path,
                                                         loss: str) -> None:
    result, recorder = train(tmp_path, base_model_path, loss=loss)
    first, last = recorder.metrics[1], recorder.metrics[max(recorder.metrics)]
    assert last["loss"] < first["loss"], (first, last)
    assert last["reward_margin"] > first["reward_margin"]
    assert last["valid_reward_accuracy"] == 1.0
    assert {"rewards_chosen", "rewards_rejected", "logps_chosen", "logps_rejected",
            "tokens_per_second", "learning_rate"} <= set(last)
    assert result.metadata["loss"] == loss and result.kind == "fine_tuned"


def test_reference_log_probabilities_are_computed_once_and_equal_a_fresh_forward(
        base_model_path: Path, tmp_path: Path) -> None:
    _, recorder = train(tmp_path, base_model_path, max_steps=2)
    cached = torch.load(tmp_path / "checkpoints" / REFERENCE_FILE, weights_only=True)
    assert torch.allclose(cached["train"], base_logps(base_model_path, pairs(32)), atol=1e-5)
    assert torch.allclose(cached["valid"], base_logps(base_model_path, pairs(40)[32:]),
                          atol=1e-5)
    assert sum("reference's log-probabilities" in m for m in recorder.logs) == 1


def test_a_lora_policy_s_reference_is_the_base_model(base_model_path: Path,
                                                     tmp_path: Path) -> None:
    recorder = Recorder()
    ctx = context(tmp_path, base_model_path,
                  hyperparameters(loss="tdpo", lora={"r": 4}, learning_rate=1e-2, max_steps=4),
                  pairs(32), recorder)
    trainer = DpoTrainer(ctx)
    result = trainer.train()
    assert result.kind == "lora_adapter"
    examples = trainer.train_examples[:8]
    reference = trainer._reference_logps(examples)  # the adapter switched off
    assert torch.allclose(reference, base_logps(base_model_path, pairs(8)), atol=1e-5)
    with torch.no_grad():  # while the trained adapter itself has moved away from it
        batch = collate_pairs(examples, trainer.pad_id, trainer.device)
        logits = trainer.model(input_ids=batch.texts.input_ids,
                               attention_mask=batch.texts.attention_mask).logits
    policy = response_logps(logits, batch.labels).view(2, -1).T
    assert not torch.allclose(policy, reference, atol=1e-3)


def test_a_stopped_dpo_job_resumes_to_the_same_weights(base_model_path: Path,
                                                       tmp_path: Path) -> None:
    whole, _ = train(tmp_path / "a", base_model_path, max_steps=6, checkpoint_every=2)
    with pytest.raises(JobStopped):
        train(tmp_path / "b", base_model_path, Recorder(stop_after_step=3), max_steps=6,
              checkpoint_every=2)
    recorder = Recorder()
    ctx = context(tmp_path / "b", base_model_path, hyperparameters(max_steps=6,
                                                                   checkpoint_every=2),
                  pairs(32), recorder, validation_rows=pairs(40)[32:],
                  resume_from=tmp_path / "b" / "checkpoints" / "step-2")
    resumed = DpoTrainer(ctx).train()
    assert sorted(recorder.metrics) == [3, 4, 5, 6]
    assert not any("reference's log-probabilities" in m for m in recorder.logs)  # cached
    expected = load_file(whole.output_dir / "model.safetensors")
    actual = load_file(resumed.output_dir / "model.safetensors")
    for name, tensor in expected.items():
        assert torch.allclose(actual[name], tensor, rtol=1e-4, atol=1e-5), name


def test_pairs_cut_to_max_seq_length_are_reported(base_model_path: Path,
                                                  tmp_path: Path) -> None:
    rows = [*pairs(7), {"prompt": "1+1=", "chosen": "2" * 40, "rejected": "3"}]
    _, recorder = train(tmp_path, base_model_path, rows=rows, max_seq_length=16, max_steps=1)
    assert any(m.startswith("1 of 8 training pairs were cut") for m in recorder.logs)


def test_a_reference_with_another_tokenizer_is_refused(base_model_path: Path,
                                                       tmp_path: Path) -> None:
    import shutil

    other = tmp_path / "other"
    shutil.copytree(base_model_path, other)
    tokenizer = AutoTokenizer.from_pretrained(other)
    tokenizer.add_tokens(["§"])
    tokenizer.save_pretrained(other)
    ctx = context(tmp_path, base_model_path, hyperparameters(reference="ft:other"), pairs(8),
                  Recorder(), resolve_model={"ft:other": other}.__getitem__)
    with pytest.raises(ValueError, match="reference 'ft:other' has another tokenizer"):
        DpoTrainer(ctx)
