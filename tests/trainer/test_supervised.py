"""Supervised fine-tuning on tiny real models: labels, learning, LoRA, stopping and resuming."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from modeling.logprobs import IGNORE_INDEX
from modeling.sequences import collate, tokenize_messages, tokenize_prompt_completion
from services.methods import LoraConfig, SupervisedHyperparameters
from trainer.checkpoint import TrainingState, latest_checkpoint, list_checkpoints
from trainer.context import JobStopped, TrainingContext, TrainingResult
from trainer.data import stream_rows
from trainer.demo_world import build_tokenizer, save_random_base_model
from trainer.methods import METHODS
from trainer.methods.supervised import SupervisedTrainer, count_steps

# -- data -------------------------------------------------------------------------------------


def test_prompt_completion_labels_cover_exactly_the_completion_and_eos() -> None:
    tokenizer = build_tokenizer()
    example = tokenize_prompt_completion(tokenizer, "12+7=", "19", max_seq_length=64)
    prompt_ids = tokenizer("12+7=")["input_ids"]
    completion_ids = tokenizer("19", add_special_tokens=False)["input_ids"]
    assert example.input_ids == prompt_ids + completion_ids + [tokenizer.eos_token_id]
    assert example.labels == [IGNORE_INDEX] * len(prompt_ids) + example.input_ids[len(prompt_ids) :]


def test_truncation_keeps_the_left_part() -> None:
    tokenizer = build_tokenizer()
    full = tokenize_prompt_completion(tokenizer, "12+7=", "19", max_seq_length=64)
    cut = tokenize_prompt_completion(tokenizer, "12+7=", "19", max_seq_length=7)
    assert cut.input_ids == full.input_ids[:7] and cut.labels == full.labels[:7]


def test_chat_labels_cover_exactly_the_assistant_turns() -> None:
    tokenizer = build_tokenizer()
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "1+1="},
        {"role": "assistant", "content": "2"},
        {"role": "user", "content": "2+3="},
        {"role": "assistant", "content": "5"},
    ]
    example = tokenize_messages(tokenizer, messages, max_seq_length=128)
    rendered = tokenizer.apply_chat_template(messages, tokenize=False)
    assert example.input_ids == tokenizer(rendered, add_special_tokens=False)["input_ids"]
    trained = [token for token, label in zip(example.input_ids, example.labels) if label != -100]
    assert tokenizer.decode(trained) == "2<|end|>5<|end|>"
    assert all(
        label in (IGNORE_INDEX, token) for token, label in zip(example.input_ids, example.labels)
    )


def test_collate_right_pads_with_pad_id_and_ignored_labels() -> None:
    tokenizer = build_tokenizer()
    short = tokenize_prompt_completion(tokenizer, "1+1=", "2", max_seq_length=64)
    long = tokenize_prompt_completion(tokenizer, "12+17=", "29", max_seq_length=64)
    batch = collate([short, long], pad_token_id=tokenizer.pad_token_id)
    size = len(short.input_ids)
    assert batch.input_ids.shape == batch.labels.shape == (2, len(long.input_ids))
    assert batch.input_ids[0, size:].eq(tokenizer.pad_token_id).all()
    assert batch.labels[0, size:].eq(IGNORE_INDEX).all()
    assert batch.attention_mask.sum(dim=1).tolist() == [size, len(long.input_ids)]


# -- the data stream ----------------------------------------------------------------------------


def test_count_steps_covers_every_epoch_and_respects_max_steps() -> None:
    hp = SupervisedHyperparameters(batch_size=3, gradient_accumulation_steps=2, n_epochs=2)
    assert count_steps(20, hp) == 7  # ceil(40 / 6)
    assert count_steps(20, hp.model_copy(update={"max_steps": 4})) == 4


def test_each_epoch_visits_every_row_once_in_a_seeded_order() -> None:
    stream = stream_rows(n_rows=10, seed=5, start=0, count=30)
    epochs = [stream[0:10], stream[10:20], stream[20:30]]
    assert all(sorted(epoch) == list(range(10)) for epoch in epochs)
    assert epochs[0] != epochs[1]
    assert stream_rows(n_rows=10, seed=6, start=0, count=10) != epochs[0]
    middle = TrainingState(step=1, epoch=1, index_in_epoch=4, trained_tokens=0)
    assert stream_rows(10, 5, start=middle.rows_consumed(10), count=9) == stream[14:23]
    assert middle.after_step(n_rows=10, rows=9, tokens=7) == TrainingState(2, 2, 3, 7)


# -- training ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def base_model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_random_base_model(tmp_path_factory.mktemp("base"), seed=0)


def arithmetic_rows(n: int, offset: int = 0) -> list[dict[str, Any]]:
    rows = []
    for index in range(offset, offset + n):
        left, right = index * 7 % 50, index * 13 % 40
        rows.append({"prompt": f"{left}+{right}=", "completion": str(left + right)})
    return rows


@dataclass
class Recorder:
    """A list-backed stand-in for the job runner behind a TrainingContext."""

    stop_after_step: int | None = None
    metrics: dict[int, dict[str, float]] = field(default_factory=dict)
    checkpoints: list[tuple[int, Path]] = field(default_factory=list)
    logs: list[str] = field(default_factory=list)

    def report_metrics(self, step: int, metrics: dict[str, float]) -> None:
        self.metrics[step] = dict(metrics)

    def on_checkpoint(self, step: int, path: Path, metrics: dict[str, float]) -> None:
        assert path.is_dir() and not path.name.endswith(".tmp")
        self.checkpoints.append((step, path))

    def check_continue(self) -> None:
        last_step = max(self.metrics, default=0)
        if self.stop_after_step is not None and last_step >= self.stop_after_step:
            raise JobStopped(f"stopped after step {last_step}")

    def losses(self) -> list[float]:
        return [self.metrics[step]["train_loss"] for step in sorted(self.metrics)]


def context(
    workdir: Path,
    base: Path,
    hp: SupervisedHyperparameters,
    rows: list[dict[str, Any]],
    recorder: Recorder,
    **overrides: Any,
) -> TrainingContext:
    defaults: dict[str, Any] = {
        "validation_rows": None,
        "seed": 0,
        "report_metrics": recorder.report_metrics,
        "on_checkpoint": recorder.on_checkpoint,
        "log": recorder.logs.append,
        "check_continue": recorder.check_continue,
    }
    return TrainingContext(
        job_id="job-test",
        base_model_path=base,
        training_rows=rows,
        hyperparameters=hp,
        output_dir=workdir / "output",
        checkpoint_root=workdir / "checkpoints",
        **{**defaults, **overrides},
    )


def train(workdir: Path, base: Path, hp: SupervisedHyperparameters, rows=None, **kw: Any):
    recorder = Recorder(stop_after_step=kw.pop("stop_after_step", None))
    ctx = context(workdir, base, hp, rows or arithmetic_rows(64), recorder, **kw)
    return METHODS["supervised"](ctx), recorder


FAST = SupervisedHyperparameters(
    batch_size=8, learning_rate=3e-3, lr_scheduler="constant", n_epochs=2, max_seq_length=32
)


def test_full_fine_tune_lowers_the_loss_and_changes_every_weight(
    base_model_path: Path, tmp_path: Path
) -> None:
    result, recorder = train(tmp_path, base_model_path, FAST)
    losses = recorder.losses()
    assert sorted(recorder.metrics) == list(range(1, 17))
    assert sum(losses[-3:]) / 3 < 0.7 * sum(losses[:3]) / 3
    assert set(recorder.metrics[1]) >= {"train_loss", "learning_rate", "tokens_per_second", "epoch"}
    assert recorder.metrics[16]["epoch"] == pytest.approx(2.0)
    assert isinstance(result, TrainingResult) and result.kind == "fine_tuned"
    row_tokens = [len(row["prompt"]) + len(row["completion"]) + 2 for row in arithmetic_rows(64)]
    assert result.trained_tokens == 2 * sum(row_tokens)  # chars + bos + eos, two epochs
    base = AutoModelForCausalLM.from_pretrained(base_model_path).state_dict()
    tuned = AutoModelForCausalLM.from_pretrained(result.output_dir).state_dict()
    unchanged = [name for name, tensor in base.items() if torch.equal(tensor, tuned[name])]
    assert unchanged == []


def test_lora_trains_only_the_adapter_and_peft_loads_it_on_the_base(
    base_model_path: Path, tmp_path: Path
) -> None:
    hp = FAST.model_copy(update={"lora": LoraConfig(r=4, alpha=8), "learning_rate": 1e-2})
    recorder = Recorder()
    trainer = SupervisedTrainer(
        context(tmp_path, base_model_path, hp, arithmetic_rows(64), recorder)
    )
    result = trainer.train()
    losses = recorder.losses()
    assert losses[-1] < 0.8 * losses[0]
    base = AutoModelForCausalLM.from_pretrained(base_model_path).state_dict()
    for name, tensor in trainer.model.get_base_model().state_dict().items():
        if "lora_" not in name:
            assert torch.equal(tensor.cpu(), base[name.replace(".base_layer", "")]), name

    assert result.kind == "lora_adapter"
    assert (result.output_dir / "adapter_config.json").is_file()
    assert not (result.output_dir / "model.safetensors").exists()
    adapter = load_file(result.output_dir / "adapter_model.safetensors")
    assert adapter and all("lora_" in name for name in adapter)
    assert all(t.abs().sum() > 0 for name, t in adapter.items() if "lora_B" in name)

    prompt = torch.tensor([[1, 8, 9, 17]])
    plain = AutoModelForCausalLM.from_pretrained(base_model_path)
    base_logits = plain(input_ids=prompt).logits
    tuned = PeftModel.from_pretrained(plain, result.output_dir)
    assert not torch.allclose(base_logits, tuned(input_ids=prompt).logits)


def test_validation_loss_goes_down(base_model_path: Path, tmp_path: Path) -> None:
    hp = FAST.model_copy(update={"eval_every": 4})
    validation = arithmetic_rows(16, offset=64)
    result, recorder = train(tmp_path, base_model_path, hp, validation_rows=validation)
    evaluated = {step: m["valid_loss"] for step, m in recorder.metrics.items() if "valid_loss" in m}
    assert sorted(evaluated) == [4, 8, 12, 16]
    assert evaluated[16] < 0.8 * evaluated[4]
    assert result.final_metrics["valid_loss"] == evaluated[16]


def test_check_continue_stops_training_at_that_step(base_model_path: Path, tmp_path: Path) -> None:
    with pytest.raises(JobStopped):
        train(tmp_path, base_model_path, FAST, stop_after_step=3)
    assert not (tmp_path / "output").exists()


def test_checkpoints_are_written_every_n_steps_and_at_the_end_keeping_two(
    base_model_path: Path, tmp_path: Path
) -> None:
    hp = FAST.model_copy(update={"checkpoint_every": 5})
    _, recorder = train(tmp_path, base_model_path, hp)
    assert [step for step, _ in recorder.checkpoints] == [5, 10, 15, 16]
    assert [p.name for p in list_checkpoints(tmp_path / "checkpoints")] == ["step-15", "step-16"]


def test_same_seed_same_losses_other_seed_other_order(
    base_model_path: Path, tmp_path: Path
) -> None:
    hp = FAST.model_copy(update={"max_steps": 5})
    _, first = train(tmp_path / "a", base_model_path, hp)
    _, again = train(tmp_path / "b", base_model_path, hp)
    _, other = train(tmp_path / "c", base_model_path, hp, seed=1)
    assert first.losses() == again.losses()
    assert first.losses() != other.losses()


RESUMABLE = SupervisedHyperparameters(
    batch_size=3,
    gradient_accumulation_steps=2,  # a step takes 6 of 20 rows, so steps straddle epochs
    n_epochs=2,
    learning_rate=3e-3,
    lr_scheduler="cosine",
    warmup_ratio=0.2,
    weight_decay=0.1,
    checkpoint_every=3,
    max_seq_length=32,
)


@pytest.mark.parametrize("lora", [None, LoraConfig(r=4, alpha=8)], ids=["full", "lora"])
def test_a_stopped_and_resumed_run_ends_where_an_uninterrupted_one_does(
    base_model_path: Path, tmp_path: Path, lora: LoraConfig | None
) -> None:
    hp = RESUMABLE.model_copy(update={"lora": lora})
    rows = arithmetic_rows(20)
    uninterrupted, run_a = train(tmp_path / "a", base_model_path, hp, rows)

    with pytest.raises(JobStopped):
        train(tmp_path / "b", base_model_path, hp, rows, stop_after_step=3)
    checkpoint = latest_checkpoint(tmp_path / "b" / "checkpoints")
    assert checkpoint is not None and checkpoint.name == "step-3"
    resumed, run_b = train(tmp_path / "b", base_model_path, hp, rows, resume_from=checkpoint)

    assert run_b.logs[-1] == "resumed from checkpoint at step 3"
    assert sorted(run_b.metrics) == [4, 5, 6, 7]
    for step in run_b.metrics:
        for name in ("train_loss", "learning_rate", "epoch"):
            assert run_b.metrics[step][name] == pytest.approx(run_a.metrics[step][name], rel=1e-6)
    assert resumed.trained_tokens == uninterrupted.trained_tokens
    weights = "model.safetensors" if lora is None else "adapter_model.safetensors"
    expected = load_file(uninterrupted.output_dir / weights)
    actual = load_file(resumed.output_dir / weights)
    assert expected.keys() == actual.keys()
    for name, tensor in expected.items():
        assert torch.allclose(actual[name], tensor, rtol=1e-6, atol=1e-7), name


def test_resuming_from_the_final_checkpoint_only_writes_the_output(
    base_model_path: Path, tmp_path: Path
) -> None:
    hp = FAST.model_copy(update={"max_steps": 4})
    first, _ = train(tmp_path / "a", base_model_path, hp)
    final = latest_checkpoint(tmp_path / "a" / "checkpoints")
    assert final is not None and final.name == "step-4"
    again, recorder = train(tmp_path / "b", base_model_path, hp, resume_from=final)
    assert recorder.metrics == {} and recorder.checkpoints == []
    assert again.trained_tokens == first.trained_tokens
    expected = load_file(first.output_dir / "model.safetensors")
    actual = load_file(again.output_dir / "model.safetensors")
    assert all(torch.equal(actual[name], tensor) for name, tensor in expected.items())


def test_the_step_loop_runs_with_the_loaded_heap_frozen_and_frees_it_after(
        base_model_path: Path, tmp_path: Path) -> None:
    """Full collections skip what was loaded before the steps (a 250-345 ms collection fell
    inside a 50 ms GRPO step), and a worker's next job finds the collector as it was."""
    import gc

    frozen: list[int] = []
    recorder = Recorder()
    ctx = context(tmp_path, base_model_path, FAST, arithmetic_rows(16), recorder,
                  check_continue=lambda: frozen.append(gc.get_freeze_count()))
    METHODS["supervised"](ctx)
    assert frozen and min(frozen) > 10_000
    assert gc.get_freeze_count() == 0
