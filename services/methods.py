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


class TrainingHyperparameters(StrictModel):
    """The optimisation and schedule knobs every step-by-step training method shares."""

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

    @property
    def effective_learning_rate(self) -> float:
        return self.learning_rate * self.learning_rate_multiplier


class SupervisedHyperparameters(TrainingHyperparameters):
    lora: LoraConfig | None = None
    """Train a LoRA adapter (peft) instead of all weights."""


class SupervisedMethod(StrictModel):
    hyperparameters: SupervisedHyperparameters = Field(default_factory=SupervisedHyperparameters)


class RewardModelHyperparameters(TrainingHyperparameters):
    """A scalar (preference rows) or per-objective (ratings rows) reward head on the base model.

    With `ensemble_size` k > 1 the job trains k members one after another, member i seeded
    with seed + i; `max_steps` and the epochs apply to each member.
    """

    margin: Annotated[float, Field(ge=-100, le=100)] | None = None
    """Bradley-Terry with a margin: −log σ(r_chosen − r_rejected − margin) (Llama 2)."""
    ensemble_size: Annotated[int, Field(ge=1, le=8)] = 1
    """Members trained in this job, each from its own seed and data order."""
    objective_weights: dict[str, Annotated[float, Field(ge=-1e3, le=1e3)]] | None = None
    """Default weighting of the objectives when the reward is read as one scalar (ratings
    rows); stored with the model for the scorer. Names must be objectives of the data."""
    center_rewards_coefficient: Annotated[float, Field(ge=0, le=100)] | None = None
    """Weight of the auxiliary loss mean((r_chosen + r_rejected)²) that keeps rewards centred
    on zero (TRL's RewardConfig.center_rewards_coefficient)."""

    @model_validator(mode="after")
    def _check_weights(self) -> RewardModelHyperparameters:
        if self.objective_weights is not None and not self.objective_weights:
            raise ValueError("objective_weights must name at least one objective, or be null")
        return self


class RewardModelMethod(StrictModel):
    hyperparameters: RewardModelHyperparameters = Field(
        default_factory=RewardModelHyperparameters
    )


MethodSection = SupervisedMethod | RewardModelMethod
METHOD_SECTIONS: dict[str, type[MethodSection]] = {
    "supervised": SupervisedMethod,
    "reward_model": RewardModelMethod,
}
"""The section each method type reads its hyperparameters from, keyed by `method.type`."""


class Method(StrictModel):
    """`{"type": "reward_model", "reward_model": {"hyperparameters": {...}}}` as in OpenAI's API.

    A union tagged by `type`: only the section named by `type` may be given (it is filled with
    defaults when left out). It is one model with a section per type rather than a pydantic
    discriminated union so that errors keep OpenAI's paths (`method.type`,
    `method.supervised.hyperparameters.n_epochs`) without the tag repeated in them.
    """

    type: Literal["supervised", "reward_model"]
    supervised: SupervisedMethod | None = None
    reward_model: RewardModelMethod | None = None

    @model_validator(mode="after")
    def _fill_section(self) -> Method:
        for name in METHOD_SECTIONS:
            if name != self.type and getattr(self, name) is not None:
                raise ValueError(f"method.{name} was given but method.type is {self.type!r}; "
                                 f"put the hyperparameters in method.{self.type}")
        if getattr(self, self.type) is None:
            setattr(self, self.type, METHOD_SECTIONS[self.type]())
        return self

    @property
    def hyperparameters(self) -> SupervisedHyperparameters | RewardModelHyperparameters:
        section: MethodSection | None = getattr(self, self.type)
        assert section is not None
        return section.hyperparameters


# Which file purposes each method accepts for its training and validation files.
METHOD_PURPOSES: dict[str, tuple[str, ...]] = {
    "supervised": ("supervised", "fine-tune"),
    "reward_model": ("preference", "ratings", "fine-tune"),
}
