"""What every method type builds on: strict models, the optimizer knobs, LoRA, reward specs,
and errors located at the field a check that spans several fields is about."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Annotated, Any, Literal, NamedTuple

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError
from pydantic_core import InitErrorDetails, PydanticCustomError


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


class OptimizerHyperparameters(StrictModel):
    """The optimizer and learning-rate schedule every training method shares."""

    learning_rate: Annotated[float, Field(gt=0, le=1.0)] = 1e-4
    learning_rate_multiplier: Annotated[float, Field(gt=0, le=100)] = 1.0
    """OpenAI's knob: the effective rate is learning_rate * learning_rate_multiplier."""
    warmup_ratio: Annotated[float, Field(ge=0, lt=1)] = 0.0
    lr_scheduler: Literal["constant", "linear", "cosine"] = "linear"
    weight_decay: Annotated[float, Field(ge=0, le=1)] = 0.0
    max_grad_norm: Annotated[float, Field(gt=0, le=1e4)] = 1.0

    @property
    def effective_learning_rate(self) -> float:
        return self.learning_rate * self.learning_rate_multiplier


class TrainingHyperparameters(OptimizerHyperparameters):
    """The knobs of methods that pass over the training rows in epochs of batches."""

    n_epochs: Annotated[int, Field(ge=1, le=100)] = 1
    batch_size: Annotated[int, Field(ge=1, le=1024)] = 8
    gradient_accumulation_steps: Annotated[int, Field(ge=1, le=1024)] = 1
    max_seq_length: Annotated[int, Field(ge=8, le=131072)] = 512
    max_steps: Annotated[int, Field(ge=1)] | None = None
    """Stop after this many optimizer steps even if epochs remain."""
    checkpoint_every: Annotated[int, Field(ge=1)] = 50
    """Optimizer steps between resumable checkpoints (one is always written at the end)."""
    eval_every: Annotated[int, Field(ge=1)] = 50
    """Optimizer steps between validation-loss evaluations when a validation file is given."""


class MethodSection(StrictModel):
    """`method.<type>`: the hyperparameters of one method type and whatever else it reads."""

    if TYPE_CHECKING:  # each section declares it with its own model, in the place it needs
        hyperparameters: OptimizerHyperparameters


def _check_reward_spec(reward: dict[str, Any]) -> dict[str, Any]:
    if not isinstance(reward.get("type"), str):
        raise ValueError(  # noqa: TRY004  (pydantic reports ValueError, not TypeError)
            "reward must be a reward spec object with a string 'type' "
            "(reward_model, ensemble, string_check, python, ...)")
    return reward


RewardSpec = Annotated[dict[str, Any], AfterValidator(_check_reward_spec)]
"""A reward spec as POST /v1/score takes it, e.g. {"type": "string_check", "input":
"{{sample.output_text}}", "reference": "{{item.answer}}", "operation": "eq", "name": "exact"};
a prompt row's fields are its `item`. The reward service validates the rest."""

class FieldError(NamedTuple):
    """One failed check across fields, reported at the field it is about."""

    field: str
    """Its path inside the model, dotted: "policy_filter.keep"."""
    message: str
    value: Any


def field_errors(model: str, errors: Sequence[FieldError],
                 kind: str = "value_error") -> ValidationError:
    """A ValidationError at the fields a check across fields is about, for model validators to
    raise: the api's envelope then names the field (method.reinforcement.hyperparameters.
    group_size) rather than the whole model. `kind` "missing" is for a required field."""
    return ValidationError.from_exception_data(model, [
        InitErrorDetails(type=PydanticCustomError(kind, "{message}", {"message": error.message}),
                         loc=tuple(error.field.split(".")), input=error.value)
        for error in errors
    ])

