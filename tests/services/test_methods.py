"""The method models on their own: the table `Method` is built from, and the reinforcement
section's per-algorithm defaults, clip ranges and refusals (pydantic only, no service)."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel, TypeAdapter, ValidationError

from services.datasets import PURPOSE_SHAPES, SHAPES
from services.methods import (
    METHOD_PURPOSES,
    METHODS,
    AlgorithmHyperparameters,
    Method,
    ReinforcementMethod,
    allowed_purposes,
    allowed_shapes,
    describe,
)
from services.methods.reinforcement import (
    HYPERPARAMETERS,
    NgrpoHyperparameters,
    PpoHyperparameters,
)

EXACT = {"type": "string_check", "input": "{{sample.output_text}}",
         "reference": "{{item.answer}}", "operation": "eq"}


class Job(BaseModel):
    method: Method


def reinforcement(**section: Any) -> ReinforcementMethod:
    return ReinforcementMethod.model_validate({"reward": EXACT, **section})


def first_error(data: dict[str, Any]) -> tuple[str, str]:
    """(dotted location, message) of the first error validating `data` as a job's method."""
    with pytest.raises(ValidationError) as info:
        Job.model_validate({"method": data})
    error = info.value.errors()[0]
    return ".".join(map(str, error["loc"])), error["msg"]


def test_method_has_a_section_and_purposes_per_table_entry() -> None:
    assert set(METHODS) <= set(Method.model_fields)
    assert METHOD_PURPOSES["reinforcement"] == ("prompts", "fine-tune")
    method = Method.model_validate({"type": "reinforcement", "reinforcement": {"reward": EXACT}})
    assert allowed_purposes(method) == ("prompts", "fine-tune")
    assert describe(method) == "a reinforcement job"
    implicit = Method.model_validate({"type": "reward_model", "reward_model": {
        "hyperparameters": {"head": "implicit"}}})
    assert allowed_purposes(implicit) == ("preference", "fine-tune")
    assert describe(implicit) == "a reward_model job with head 'implicit'"


def test_each_method_names_the_row_shapes_it_trains_on() -> None:
    """Every shape a method names exists and a file of one of its purposes can hold it; the
    implicit reward head narrows its shapes to pairs as it narrows its purposes."""
    for name, entry in METHODS.items():
        held = {shape for purpose in entry.purposes for shape in PURPOSE_SHAPES[purpose]}
        assert entry.shapes and set(entry.shapes) <= set(SHAPES) & held, name
    online = Method.model_validate({"type": "reinforcement", "reinforcement": {"reward": EXACT}})
    assert allowed_shapes(online) == ("prompt_only", "conversational_prompt_only", "openai_rft")
    implicit = Method.model_validate({"type": "reward_model", "reward_model": {
        "hyperparameters": {"head": "implicit"}}})
    assert allowed_shapes(implicit) == ("preference", "conversational_preference",
                                        "openai_preference")
    assert "ratings" in allowed_shapes(Method.model_validate({"type": "reward_model"}))


def test_a_stored_method_reads_back_the_same() -> None:
    """The trainer re-validates the row the api stored: `grader` is stored as `reward`."""
    given = Method.model_validate({"type": "reinforcement", "reinforcement": {
        "grader": EXACT, "hyperparameters": {"group_size": 8, "policy_filter": {
            "strategy": "best_worst", "keep": 4}}}})
    stored = given.model_dump(mode="json")
    assert stored["reinforcement"]["reward"] == EXACT and "grader" not in stored["reinforcement"]
    again = Method.model_validate(stored)
    assert again == given and again.hyperparameters == given.hyperparameters


@pytest.mark.parametrize("algorithm, beta, kl, whiten, clip", [
    ("grpo", 0.0, ("k3", "loss"), False, (0.2, 0.2)),
    ("rloo", 0.0, ("k3", "loss"), False, (0.2, 0.2)),
    ("remax", 0.0, ("k3", "loss"), False, (0.2, 0.2)),
    ("ngrpo", 0.0, ("k3", "loss"), False, (0.16, 0.24)),
    ("ppo", 0.05, ("k1", "reward"), True, (0.2, 0.2)),
])
def test_defaults_per_algorithm(algorithm: str, beta: float, kl: tuple[str, str], whiten: bool,
                                clip: tuple[float, float]) -> None:
    hp = reinforcement(algorithm=algorithm).hyperparameters
    assert type(hp) is HYPERPARAMETERS[algorithm] and hp.algorithm == algorithm
    assert hp.beta == beta and (hp.kl_estimator, hp.kl_in) == kl
    assert hp.whiten_advantages is whiten and hp.clip_range() == clip
    assert (hp.group_size, hp.prompts_per_step, hp.sequences_per_step) == (4, 8, 32)


def test_no_algorithm_is_grpo_and_the_union_picks_by_name() -> None:
    assert reinforcement().algorithm == "grpo"
    assert reinforcement().hyperparameters.algorithm == "grpo"
    hp = TypeAdapter(AlgorithmHyperparameters).validate_python({"algorithm": "ppo"})
    assert isinstance(hp, PpoHyperparameters) and hp.lam == 0.95 and hp.critic_model is None


def test_an_algorithms_default_yields_to_the_users_value() -> None:
    hp = reinforcement(algorithm="ppo", hyperparameters={"beta": 0.0, "kl_in": "loss"})
    assert (hp.hyperparameters.beta, hp.hyperparameters.kl_in) == (0.0, "loss")
    assert hp.hyperparameters.kl_estimator == "k1"


def test_clip_range_takes_each_side_given() -> None:
    assert NgrpoHyperparameters(clip_range_low=0.1).clip_range() == (0.1, 0.24)
    assert PpoHyperparameters(clip_range_high=0.28).clip_range() == (0.2, 0.28)
    assert NgrpoHyperparameters(clip_range_low=0, clip_range_high=0).clip_range() == (0, 0)


def test_an_option_of_another_algorithm_says_how_to_fix_it() -> None:
    where, message = first_error({"type": "reinforcement", "reinforcement": {
        "algorithm": "grpo", "reward": EXACT, "hyperparameters": {"r_max": 0.5}}})
    assert where == "method.reinforcement.hyperparameters.r_max"
    assert message == ("r_max is an option of algorithm 'ngrpo', not 'grpo'; remove it or set "
                       "algorithm to 'ngrpo'")
    with pytest.raises(ValidationError,
                       match="gamma is an option of algorithm 'ppo' or 'rto', not 'rloo'"):
        reinforcement(algorithm="rloo", hyperparameters={"gamma": 0.9})


@pytest.mark.parametrize("section, where, words", [
    ({"algorithm": "dpo"}, "algorithm",
     "choose one of grpo, rloo, remax, ngrpo, ppo, rto, superhf"),
    ({"hyperparameters": {"clip_range": 0.2}}, "hyperparameters.clip_range", "Extra inputs"),
    ({"hyperparameters": {"algorithm": "ppo"}}, "hyperparameters", "set it once"),
    ({"algorithm": "rloo", "hyperparameters": {"group_size": 1}}, "hyperparameters.group_size",
     "at least 2 for algorithm 'rloo'"),
    ({"hyperparameters": {"group_size": 4, "policy_filter": {"strategy": "best", "keep": 1}}},
     "hyperparameters.policy_filter.keep", "at least 2 for algorithm 'grpo'"),
    ({"hyperparameters": {"policy_filter": {"strategy": "best", "keep": 2},
                          "minibatch_size": 17}},
     "hyperparameters.minibatch_size", "prompts_per_step × policy_filter.keep = 8 × 2 = 16"),
    ({"hyperparameters": {"kl_target": 6.0}}, "hyperparameters.kl_target", "beta"),
    ({"algorithm": "ppo", "hyperparameters": {"lam": 1.5}}, "hyperparameters.lam",
     "less than or equal to 1"),
    # options that would combine into silently wrong training
    ({"hyperparameters": {"beta": 0.1, "kl_estimator": "k1"}}, "hyperparameters.kl_estimator",
     "kl_in 'loss' does nothing"),
    ({"algorithm": "ngrpo", "hyperparameters": {"reward_normalization": "batch"}},
     "hyperparameters.reward_normalization", "r_max"),
    ({"algorithm": "ngrpo", "hyperparameters": {"beta": 0.1, "kl_in": "reward"}},
     "hyperparameters.kl_in", "r_max"),
    ({"algorithm": "remax", "hyperparameters": {"beta": 0.1, "kl_in": "reward"}},
     "hyperparameters.kl_in", "greedy baseline"),
    ({"algorithm": "superhf", "hyperparameters": {"whiten_advantages": True}},
     "hyperparameters.whiten_advantages", "trains nothing"),
    ({"hyperparameters": {"top_k": 20}}, "hyperparameters.top_k", "π_old"),
    ({"algorithm": "ppo", "hyperparameters": {"top_p": 0.9}}, "hyperparameters.top_p",
     "π_old"),
    ({"hyperparameters": {"rollout_is_cap": 2.0, "temperature": 0.7}},
     "hyperparameters.rollout_is_cap", "temperature 1"),
    ({"algorithm": "superhf", "hyperparameters": {"rollout_is_cap": 2.0}},
     "hyperparameters.rollout_is_cap", "no ratio"),
    ({"algorithm": "superhf", "hyperparameters": {"minibatch_size": 9}},
     "hyperparameters.minibatch_size", "prompts_per_step × responses kept = 8 × 1 = 8"),
])
def test_refusals_name_the_field(section: dict[str, Any], where: str, words: str) -> None:
    location, message = first_error({"type": "reinforcement",
                                     "reinforcement": {"reward": EXACT, **section}})
    assert location == f"method.reinforcement.{where}" and words in message, message


def test_the_refused_combinations_have_a_working_neighbour() -> None:
    """Each refusal's suggested fix is accepted."""
    reinforcement(hyperparameters={"beta": 0.1, "kl_estimator": "k2"})
    reinforcement(hyperparameters={"beta": 0.1, "kl_estimator": "k1", "kl_in": "reward"})
    reinforcement(algorithm="ngrpo", hyperparameters={"beta": 0.1, "reward_clip": 0.5})
    reinforcement(algorithm="remax", hyperparameters={"beta": 0.1,
                                                      "reward_normalization": "running"})
    superhf = reinforcement(algorithm="superhf", hyperparameters={"minibatch_size": 8,
                                                                  "top_k": 20, "top_p": 0.9})
    assert superhf.hyperparameters.sequences_per_step == 8


def test_group_free_algorithms_take_one_sample_per_prompt() -> None:
    for algorithm in ("remax", "ppo"):
        hp = reinforcement(algorithm=algorithm, hyperparameters={"group_size": 1}).hyperparameters
        assert hp.sequences_per_step == 8
    kept = reinforcement(algorithm="ppo", hyperparameters={
        "group_size": 4, "policy_filter": {"strategy": "best", "keep": 1}}).hyperparameters
    assert kept.sequences_per_step == 8 and kept.responses_kept == 1


@pytest.mark.parametrize("hyperparameters", [
    {}, {"loss": "conservative"}, {"loss": "ipo"},
    {"loss": "tdpo", "tdpo_alpha": 0.5, "tdpo_stop_gradient": True},
    {"reference": "ft:x:y:z", "lora": {"r": 4}},
])
def test_a_stored_dpo_method_reads_back_as_it_was(hyperparameters: dict) -> None:
    """The worker re-validates the job row's method: defaults written out must not read as
    options given against the loss."""
    method = Method.model_validate({"type": "dpo", "dpo": {"hyperparameters": hyperparameters}})
    assert Method.model_validate(method.model_dump(mode="json")) == method


@pytest.mark.parametrize("algorithm", ["grpo", "rloo", "remax", "ngrpo", "ppo"])
def test_a_stored_reinforcement_method_reads_back_as_it_was(algorithm: str) -> None:
    method = Method.model_validate({"type": "reinforcement", "reinforcement": {
        "algorithm": algorithm, "reward": {"type": "x"}}})
    assert Method.model_validate(method.model_dump(mode="json")) == method
