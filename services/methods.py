"""The `method` object of a fine-tuning job: its type and strictly validated hyperparameters.

Shared by the api (validation at create time) and the trainer (which reads the same models
back from the job row), so both sides agree on names, defaults and ranges.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class StrictModel(BaseModel):
    """Unknown fields are errors: a typo in a hyperparameter must not be silently ignored."""

    model_config = ConfigDict(extra="forbid")


class LoraConfig(StrictModel):
    r: Annotated[int, Field(ge=1, le=1024)] = 8
    """Rank of the low-rank update."""
    alpha: Annotated[float, Field(gt=0, le=4096)] = 16.0
    """Scaling numerator: the update is multiplied by alpha / r."""
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.0
    target_modules: list[str] | None = None
    """Module names to adapt; None lets peft pick the architecture's defaults (attention projections)."""


class SupervisedHyperparameters(StrictModel):
    n_epochs: Annotated[int, Field(ge=1, le=100)] = 1
    batch_size: Annotated[int, Field(ge=1, le=1024)] = 8
    learning_rate: Annotated[float, Field(gt=0, le=1.0)] = 1e-4
    learning_rate_multiplier: Annotated[float, Field(gt=0, le=100)] = 1.0
    """OpenAI's knob: the effective rate is learning_rate * learning_rate_multiplier."""
    warmup_ratio: Annotated[float, Field(ge=0, lt=1)] = 0.0
    lr_scheduler: Literal["constant", "linear", "cosine"] = "linear"
    weight_decay: Annotated[float, Field(ge=0, le=1)] = 0.0
    max_grad_norm: Annotated[float, Field(gt=0, le=1e4)] = 1.0
    gradient_accumulation_steps: Annotated[int, Field(ge=1, le=1024)] = 1
    max_seq_length: Annotated[int, Field(ge=8, le=131072)] = 512
    max_steps: Annotated[int, Field(ge=1)] | None = None
    """Stop after this many optimizer steps even if epochs remain."""
    checkpoint_every: Annotated[int, Field(ge=1)] = 50
    """Optimizer steps between resumable checkpoints (one is always written at the end)."""
    eval_every: Annotated[int, Field(ge=1)] = 50
    """Optimizer steps between validation-loss evaluations when a validation file is given."""
    lora: LoraConfig | None = None
    """Train a LoRA adapter (peft) instead of all weights."""

    @property
    def effective_learning_rate(self) -> float:
        return self.learning_rate * self.learning_rate_multiplier


class SupervisedMethod(StrictModel):
    hyperparameters: SupervisedHyperparameters = Field(default_factory=SupervisedHyperparameters)


class Method(StrictModel):
    """`{"type": "supervised", "supervised": {"hyperparameters": {...}}}` as in OpenAI's API."""

    type: Literal["supervised"]
    supervised: SupervisedMethod | None = None

    @model_validator(mode="after")
    def _fill_section(self) -> Method:
        if self.supervised is None:
            self.supervised = SupervisedMethod()
        return self

    @property
    def hyperparameters(self) -> SupervisedHyperparameters:
        assert self.supervised is not None
        return self.supervised.hyperparameters


# Which file purposes each method accepts for its training and validation files.
METHOD_PURPOSES: dict[str, tuple[str, ...]] = {
    "supervised": ("supervised", "fine-tune"),
}
