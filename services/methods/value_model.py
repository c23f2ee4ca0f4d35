"""`method.value_model`: a value model for Value Augmented Sampling (Han et al. 2024)."""

from __future__ import annotations

from typing import Annotated

from pydantic import ConfigDict, Field, model_validator

from services.methods.base import MethodSection, RewardSpec, TrainingHyperparameters

SHAPES = ("prompt_only", "conversational_prompt_only", "openai_rft")
"""The row shapes (`services.datasets.SHAPES`) it trains on: the prompts whose completions it
samples; a row's other fields are the reward's `item`."""


class ValueModelHyperparameters(TrainingHyperparameters):
    """A value model for Value Augmented Sampling (Han et al. 2024): completions of the
    prompts sampled from the frozen base model, scored with `reward` by the reward service,
    fit by TD(λ). The optimisation knobs count sampled completions, not prompt rows."""

    # "lambda" is a Python keyword: the field is lambda_, read and written as "lambda".
    model_config = ConfigDict(extra="forbid", serialize_by_alias=True)

    reward: RewardSpec
    """The reward spec the reward service scores completions with (as in POST /v1/score), e.g.
    {"type": "string_check", "input": "{{sample.output_text}}", "reference": "{{item.answer}}",
    "operation": "eq", "name": "exact"}; a prompt row's fields are its `item`."""
    gamma: Annotated[float, Field(ge=0, le=1)] = 1.0
    """Discount per token."""
    lambda_: Annotated[float, Field(ge=0, le=1, alias="lambda")] = 0.95
    """TD(λ) mixing: 1 is Monte Carlo (every target is the reward), 0 one-step TD."""
    samples_per_prompt: Annotated[int, Field(ge=1, le=256)] = 4
    max_new_tokens: Annotated[int, Field(ge=1, le=4096)] = 16
    temperature: Annotated[float, Field(gt=0, le=10)] = 1.0
    top_k: Annotated[int, Field(ge=0, le=100_000)] = 0
    """Sample from the k likeliest tokens only; 0 samples from the whole vocabulary."""
    rollout_batch_size: Annotated[int, Field(ge=1, le=4096)] = 32
    """Sequences generated together in one `generate` call."""

    @model_validator(mode="after")
    def _room_to_sample(self) -> ValueModelHyperparameters:
        if self.max_new_tokens >= self.max_seq_length:
            raise ValueError(f"max_new_tokens ({self.max_new_tokens}) must be less than "
                             f"max_seq_length ({self.max_seq_length}), which bounds prompt "
                             "and completion together")
        return self


class ValueModelMethod(MethodSection):
    hyperparameters: ValueModelHyperparameters
