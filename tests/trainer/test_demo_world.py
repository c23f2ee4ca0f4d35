"""The demo world: task and grader, tokenizer, tiny model, cached build, datasets, evaluation."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from trainer.demo_world import (
    TINY_LLAMA,
    DemoWorld,
    build_demo_world,
    build_model,
    build_tokenizer,
    default_demo_root,
    exact_match_accuracy,
    extract_answer,
    gold_grade,
    make_problems,
    save_random_base_model,
    wrong_answer,
)
from trainer.demo_world.datasets import SLIP_RATE, SPLIT_SIZES, read_jsonl, supervised_rows
from trainer.demo_world.task import make_problem, misconception_answer

TINY_STEPS = 3
"""Pretraining steps for worlds whose model quality the test does not look at."""


@pytest.fixture(scope="module")
def tiny_world(tmp_path_factory: pytest.TempPathFactory) -> DemoWorld:
    return build_demo_world(tmp_path_factory.mktemp("world") / "demo", pretrain_steps=TINY_STEPS)


# --- task ------------------------------------------------------------------------------------


def test_make_problem_computes_gold_answers() -> None:
    assert make_problem(23, "+", 48).prompt == "23+48="
    assert make_problem(23, "+", 48).answer == "71"
    assert make_problem(23, "-", 48).answer == "-25"
    assert make_problem(7, "*", 8).answer == "56"
    assert make_problem(0, "-", 0).answer == "0"


def test_make_problems_is_deterministic_distinct_and_in_range() -> None:
    problems = make_problems(500, seed=3)
    assert problems == make_problems(500, seed=3)
    assert problems != make_problems(500, seed=4)
    assert len({p.prompt for p in problems}) == 500
    for problem in problems:
        left, op, right = problem.operands
        assert op in "+-" and 0 <= left <= 99 and 0 <= right <= 99
        assert make_problem(left, op, right) == problem
    assert {p.operands[1] for p in make_problems(50, 0, max_operand=9, ops="*")} == {"*"}


def test_make_problems_refuses_more_than_exist() -> None:
    assert len(make_problems(8, 0, max_operand=1, ops="+-")) == 8  # 2 * 2 * 2 problems exist
    with pytest.raises(ValueError, match=r"n must be in \[0, 8\]"):
        make_problems(9, 0, max_operand=1, ops="+-")
    with pytest.raises(ValueError, match="ops"):
        make_problems(1, 0, ops="/")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("71", "71"),
        (" 71<eos>", "71"),
        ("71<eos>99", "71"),
        ("-25", "-25"),
        ("The answer is 71.", "71"),
        ("23+48=71", "23"),
        ("\n71", None),
        ("<|end|>71", None),
        ("abc", None),
        ("", None),
    ],
)
def test_extract_answer(text: str, expected: str | None) -> None:
    assert extract_answer(text) == expected


@pytest.mark.parametrize(
    ("completion", "answer", "grade"),
    [
        ("71", "71", 1.0),
        ("71<eos>", "71", 1.0),
        (" 71\n12", "71", 1.0),
        ("071", "71", 1.0),
        ("-25", "-25", 1.0),
        ("25", "-25", 0.0),
        ("70", "71", 0.0),
        ("23+48=71", "71", 0.0),
        ("", "71", 0.0),
    ],
)
def test_gold_grade(completion: str, answer: str, grade: float) -> None:
    assert gold_grade(completion, answer) == grade


def test_misconception_answer_forgets_carries_and_borrows() -> None:
    assert misconception_answer(make_problem(23, "+", 48)) == "61"
    assert misconception_answer(make_problem(57, "+", 68)) == "115"
    assert misconception_answer(make_problem(61, "-", 28)) == "47"
    assert misconception_answer(make_problem(28, "-", 61)) == "-47"
    assert misconception_answer(make_problem(60, "+", 25)) == "85"  # no carry: gold


def test_wrong_answer_is_wrong_plausible_and_seeded() -> None:
    problems = make_problems(300, seed=1)
    first = [wrong_answer(p, random.Random(7)) for p in problems]
    assert first == [wrong_answer(p, random.Random(7)) for p in problems]
    for problem, wrong in zip(problems, first):
        assert gold_grade(wrong, problem.answer) == 0.0
        assert abs(int(wrong) - int(problem.answer)) <= 99


# --- tokenizer -------------------------------------------------------------------------------


TEXTS = ["23+48=71", "23-48=-25", "7*8=56", "The answer is 71.\nYes, (really)!", "a  b"]


def test_tokenizer_is_character_level_with_bos(tmp_path: Path) -> None:
    tokenizer = build_tokenizer()
    ids = tokenizer("23+48=71")["input_ids"]
    assert ids[0] == tokenizer.bos_token_id and len(ids) == 1 + len("23+48=71")
    assert tokenizer.convert_ids_to_tokens(ids[1:]) == list("23+48=71")
    assert {
        tokenizer.pad_token_id,
        tokenizer.bos_token_id,
        tokenizer.eos_token_id,
        tokenizer.unk_token_id,
    } == {0, 1, 2, 3}
    assert tokenizer("é")["input_ids"] == [tokenizer.bos_token_id, tokenizer.unk_token_id]
    assert tokenizer("<|user|>1", add_special_tokens=False)["input_ids"] == [
        tokenizer.convert_tokens_to_ids("<|user|>"),
        tokenizer.convert_tokens_to_ids("1"),
    ]


def test_tokenizer_round_trips_through_save_pretrained(tmp_path: Path) -> None:
    build_tokenizer().save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    for text in TEXTS:
        ids = loaded(text)["input_ids"]
        assert ids == build_tokenizer()(text)["input_ids"]
        assert loaded.decode(ids, skip_special_tokens=True) == text
    assert (loaded.bos_token, loaded.eos_token, loaded.pad_token, loaded.unk_token) == (
        "<bos>",
        "<eos>",
        "<pad>",
        "<unk>",
    )
    batch = loaded(["1+1=", "10+10="], padding=True, padding_side="left")
    assert batch["input_ids"][0][:2] == [loaded.pad_token_id] * 2


def test_chat_template_renders_turns_and_generation_prompt(tmp_path: Path) -> None:
    build_tokenizer().save_pretrained(tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    conversation = [{"role": "user", "content": "23+48="}, {"role": "assistant", "content": "71"}]
    rendered = tokenizer.apply_chat_template(conversation, tokenize=False)
    assert rendered == "<bos><|user|>23+48=<|end|><|assistant|>71<|end|>"
    prompt = tokenizer.apply_chat_template(
        conversation[:1], tokenize=False, add_generation_prompt=True
    )
    assert prompt == "<bos><|user|>23+48=<|end|><|assistant|>"
    assert rendered.startswith(prompt)
    ids = tokenizer.apply_chat_template(conversation[:1], add_generation_prompt=True)
    ids = ids["input_ids"] if not isinstance(ids, list) else ids
    assert ids[0] == tokenizer.bos_token_id and ids.count(tokenizer.bos_token_id) == 1
    assert ids[-1] == tokenizer.convert_tokens_to_ids("<|assistant|>")
    system = [{"role": "system", "content": "Be brief."}, *conversation[:1]]
    assert tokenizer.apply_chat_template(system, tokenize=False).startswith("<bos>Be brief.\n")


# --- model -----------------------------------------------------------------------------------


def test_save_random_base_model_loads_with_auto_classes(tmp_path: Path) -> None:
    path = save_random_base_model(tmp_path / "base", seed=5)
    model = AutoModelForCausalLM.from_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    config = model.config
    assert (config.hidden_size, config.num_attention_heads, config.head_dim) == (128, 2, 64)
    assert config.num_hidden_layers == TINY_LLAMA["num_hidden_layers"]
    assert config.vocab_size == len(tokenizer) and not config.tie_word_embeddings
    assert model.dtype == torch.float32
    assert tokenizer.convert_tokens_to_ids("<|end|>") in model.generation_config.eos_token_id
    same = build_model(tokenizer, seed=5).state_dict()
    assert all(torch.equal(value, same[name]) for name, value in model.state_dict().items())
    encoded = tokenizer(["1+1="], return_tensors="pt")
    out = model.generate(**encoded, max_new_tokens=3, do_sample=False)  # (1, 5 + ≤3)
    assert out.shape[1] <= encoded["input_ids"].shape[1] + 3


def test_build_model_leaves_global_rng_alone() -> None:
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    build_model(build_tokenizer(), seed=1, num_hidden_layers=1)
    assert torch.equal(torch.rand(3), expected)


# --- build -----------------------------------------------------------------------------------


def _file_bytes(world: DemoWorld) -> dict[str, bytes]:
    names = [name for name in SPLIT_SIZES]
    return {name: getattr(world, name).read_bytes() for name in names}


def test_build_is_deterministic_and_reports_progress(tmp_path: Path, tiny_world: DemoWorld) -> None:
    calls: list[tuple[int, int, float]] = []
    again = build_demo_world(
        tmp_path / "again",
        pretrain_steps=TINY_STEPS,
        progress=lambda step, total, loss: calls.append((step, total, loss)),
    )
    assert _file_bytes(again) == _file_bytes(tiny_world)
    assert [(step, total) for step, total, _ in calls] == [(1, 3), (2, 3), (3, 3)]
    assert all(loss > 0 for _, _, loss in calls)
    other = build_demo_world(tmp_path / "other", seed=1, pretrain_steps=TINY_STEPS)
    assert _file_bytes(other)["supervised"] != _file_bytes(tiny_world)["supervised"]


def test_build_is_cached_by_manifest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "demo"
    world = build_demo_world(root, pretrain_steps=TINY_STEPS)
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["config"]["pretraining"]["steps"] == TINY_STEPS

    def no_training(*args: Any, **kwargs: Any) -> list[float]:
        raise AssertionError("a cached world must not be pretrained again")

    monkeypatch.setattr("trainer.demo_world.build.pretrain", no_training)
    started = time.perf_counter()
    assert build_demo_world(root, pretrain_steps=TINY_STEPS) == world
    assert time.perf_counter() - started < 5  # generous: no training, no data generation
    with pytest.raises(AssertionError, match="must not be pretrained"):
        build_demo_world(root, pretrain_steps=TINY_STEPS + 1)  # a new config rebuilds
    assert json.loads((root / "manifest.json").read_text()) == manifest  # old world intact
    assert sorted(p.name for p in tmp_path.iterdir()) == [".demo.lock", "demo"]  # no scratch left


def test_interrupted_build_is_redone(tmp_path: Path) -> None:
    root = tmp_path / "demo"
    root.mkdir()
    (root / "supervised.jsonl").write_text("half written")  # no manifest: never finished
    world = build_demo_world(root, pretrain_steps=TINY_STEPS)
    assert (root / "manifest.json").exists()
    assert len(read_jsonl(world.supervised)) == SPLIT_SIZES["supervised"]


def test_build_refuses_to_replace_a_foreign_folder(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not a demo world folder"):
        build_demo_world(tmp_path, pretrain_steps=TINY_STEPS)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_default_demo_root_honours_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("ALIGND_DEMO_DIR", str(tmp_path))
    assert default_demo_root() == tmp_path
    monkeypatch.delenv("ALIGND_DEMO_DIR")
    assert default_demo_root() == Path.home() / ".cache" / "alignd" / "demo"


# --- datasets --------------------------------------------------------------------------------


def _prompt_of(row: dict[str, Any]) -> str:
    if "messages" in row:
        return next(m["content"] for m in row["messages"] if m["role"] == "user")
    return str(row["prompt"])


def test_dataset_shapes(tiny_world: DemoWorld) -> None:
    rows = {name: read_jsonl(getattr(tiny_world, name)) for name in SPLIT_SIZES}
    assert {name: len(r) for name, r in rows.items()} == SPLIT_SIZES
    shapes = {tuple(sorted(row)) for row in rows["supervised"]}
    assert shapes == {("completion", "prompt"), ("messages",)}
    for row in rows["supervised"] + rows["supervised_validation"]:
        if "messages" in row:
            assert [m["role"] for m in row["messages"]] == ["user", "assistant"]
        problem = make_problem(*_operands(_prompt_of(row)))
        assert _completion_of(row) in {problem.answer, misconception_answer(problem)}
    for row in rows["preference"]:
        assert set(row) == {"prompt", "chosen", "rejected"}
        assert gold_grade(row["chosen"], make_problem(*_operands(row["prompt"])).answer) == 1.0
        assert gold_grade(row["rejected"], row["chosen"]) == 0.0
    for name in ("prompts", "eval_prompts"):
        for row in rows[name]:
            assert set(row) == {"prompt", "answer"}
            assert make_problem(*_operands(row["prompt"])).answer == row["answer"]
    for row in rows["ratings"]:
        assert set(row) == {"prompt", "response", "scores"}
        scores = row["scores"]
        assert set(scores) == {"correctness", "brevity"} and 0.0 <= scores["brevity"] <= 1.0
        gold = make_problem(*_operands(row["prompt"])).answer
        assert scores["correctness"] == gold_grade(row["response"], gold)
    correctness = [row["scores"]["correctness"] for row in rows["ratings"]]
    assert 0.3 < sum(correctness) / len(correctness) < 0.7


def _completion_of(row: dict[str, Any]) -> str:
    if "messages" in row:
        return next(m["content"] for m in row["messages"] if m["role"] == "assistant")
    return str(row["completion"])


def test_demonstrations_slip_only_where_a_carry_or_borrow_is_needed() -> None:
    problems = [make_problem(23, "+", 48), make_problem(60, "+", 25), make_problem(61, "-", 28)]
    always = supervised_rows(problems * 4, random.Random(0), slip_rate=1.0)
    assert [_completion_of(row) for row in always[:3]] == ["61", "85", "47"]
    assert "messages" in always[3] and "messages" in always[7]  # every 4th row
    never = supervised_rows(problems, random.Random(0), slip_rate=0.0)
    assert [_completion_of(row) for row in never] == ["71", "85", "33"]


def test_demonstrations_slip_at_the_configured_rate(tiny_world: DemoWorld) -> None:
    rows = read_jsonl(tiny_world.supervised)
    problems = [make_problem(*_operands(_prompt_of(row))) for row in rows]
    could_slip = [
        (problem, row) for problem, row in zip(problems, rows, strict=True)
        if misconception_answer(problem) != problem.answer
    ]
    slipped = sum(_completion_of(row) != problem.answer for problem, row in could_slip)
    assert 0.3 < len(could_slip) / len(rows) < 0.6
    assert abs(slipped / len(could_slip) - SLIP_RATE) < 0.05, (slipped, len(could_slip))


def test_eval_prompts_are_held_out_from_training(tiny_world: DemoWorld) -> None:
    eval_prompts = {row["prompt"] for row in read_jsonl(tiny_world.eval_prompts)}
    for name in SPLIT_SIZES:
        if name != "eval_prompts":
            training = {_prompt_of(row) for row in read_jsonl(getattr(tiny_world, name))}
            assert not eval_prompts & training, name


def _operands(prompt: str) -> tuple[int, str, int]:
    from trainer.demo_world.task import Problem

    return Problem(prompt=prompt, answer="").operands


# --- evaluation ------------------------------------------------------------------------------


def test_exact_match_accuracy_with_and_without_adapter(
    tiny_world: DemoWorld, tmp_path: Path
) -> None:
    from peft import LoraConfig, get_peft_model

    rows = read_jsonl(tiny_world.eval_prompts)[:20]
    accuracy = exact_match_accuracy(tiny_world.base_model, rows, max_new_tokens=4)
    assert 0.0 <= accuracy <= 1.0
    base = AutoModelForCausalLM.from_pretrained(tiny_world.base_model)
    adapted = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    adapted.save_pretrained(tmp_path / "adapter")
    with_adapter = exact_match_accuracy(
        tiny_world.base_model, rows, max_new_tokens=4, adapter_dir=tmp_path / "adapter"
    )
    assert with_adapter == accuracy  # a fresh LoRA adapter is a no-op (B starts at zero)
    with pytest.raises(ValueError, match="rows"):
        exact_match_accuracy(tiny_world.base_model, [])


# --- the point of the demo: fine-tuning visibly helps ----------------------------------------


def _fine_tune(model_dir: Path, rows: list[dict[str, Any]], out: Path) -> Path:
    """The platform's own `supervised` method, with what `alignd demo` fine-tunes with (300
    steps of 32 rows, lr 1e-3, linear decay): the demo's claim is about alignd, not a loop
    written here."""
    from services.methods import SupervisedHyperparameters
    from tests.trainer.test_supervised import Recorder, context
    from trainer.methods import METHODS

    hyperparameters = SupervisedHyperparameters.model_validate(
        {"max_steps": 300, "n_epochs": 100, "batch_size": 32, "learning_rate": 1e-3,
         "checkpoint_every": 10_000})
    return METHODS["supervised"](context(out, model_dir, hyperparameters, rows,
                                         Recorder())).output_dir


@pytest.mark.slow
def test_supervised_fine_tuning_lifts_held_out_accuracy(demo_world: Any, tmp_path: Path) -> None:
    """On the session's demo world (the full pretraining, built once and cached)."""
    world = demo_world
    eval_rows = read_jsonl(world.eval_prompts)
    before = exact_match_accuracy(world.base_model, eval_rows)
    # Left padding must not change what a prompt decodes to.
    assert exact_match_accuracy(world.base_model, eval_rows, batch_size=7) == before
    tuned = _fine_tune(world.base_model, read_jsonl(world.supervised), tmp_path / "sft")
    after = exact_match_accuracy(tuned, eval_rows)
    print(f"held-out exact match: base {before:.1%}, after SFT {after:.1%}")
    assert before <= 0.4, "the base model should leave room for fine-tuning to show"
    assert after >= before + 0.2, (before, after)
