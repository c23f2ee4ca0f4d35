"""`method.reward_model`: a scalar or per-objective reward head, or the implicit (DPO) reward."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from services.methods.base import MethodSection, TrainingHyperparameters

SHAPES = ("preference", "conversational_preference", "openai_preference", "ratings")
"""The row shapes (`services.datasets.SHAPES`) it trains on: pairs (a Bradley-Terry or the
implicit head), or ratings (a head per objective)."""

IMPLICIT_ONLY = ("beta", "reference", "sft_coefficient")
"""Hyperparameters of the implicit head only; given with the classifier head they are refused."""
IMPLICIT_DEFAULTS: dict[str, Any] = {"beta": 0.5, "reference": "none", "sft_coefficient": 1.0}
IMPLICIT_PURPOSES = ("preference", "fine-tune")
"""The implicit reward head scores a response by its likelihood: it trains on pairs only."""


class RewardModelHyperparameters(TrainingHyperparameters):
    """A scalar (preference rows) or per-objective (ratings rows) reward head on the base model.

    With `ensemble_size` k > 1 the job trains k members one after another, member i seeded
    with seed + i; `max_steps` and the epochs apply to each member.

    `head` "implicit" reads the reward off the causal LM itself (preference rows only):
    r(x, y) = beta * (sum over y's tokens of log pi(y_t | x, y_<t) - the same sum under the
    reference), the DPO implicit reward (Rafailov et al. 2023, eq. 5), reference-free by default.
    """

    head: Literal["classifier", "implicit"] = "classifier"
    """"classifier": a sequence-classification head reads the last token's hidden state.
    "implicit": the summed log-probability of the response under the trained causal LM."""
    beta: Annotated[float, Field(gt=0, le=100)] | None = None
    """Implicit head: the reward's scale (default 0.5)."""
    reference: Literal["none", "base"] | None = None
    """Implicit head: "none" (default) scores beta * log pi(y|x); "base" subtracts the log-
    probability under the frozen base model, beta * log(pi(y|x) / pi_base(y|x))."""
    sft_coefficient: Annotated[float, Field(ge=0, le=100)] | None = None
    """Implicit head: weight of the per-token negative log-likelihood of the chosen responses
    added to the Bradley-Terry loss (default 1.0); it keeps pi a language model of good answers."""

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

    @model_validator(mode="after")
    def _check_head(self) -> RewardModelHyperparameters:
        """Each head's own hyperparameters only; the implicit head's defaults filled in."""
        if self.head == "classifier":
            given = [name for name in IMPLICIT_ONLY if getattr(self, name) is not None]
            if given:
                raise ValueError(f"{', '.join(given)}: only for head 'implicit', and head is "
                                 "'classifier'; set head to 'implicit' or leave them out")
            return self
        refused = [name for name in ("objective_weights", "center_rewards_coefficient")
                   if getattr(self, name) is not None]
        if refused:
            raise ValueError(f"{', '.join(refused)}: only for head 'classifier'; the "
                             "implicit head's one reward is a log-probability of the response")
        for name, default in IMPLICIT_DEFAULTS.items():
            if getattr(self, name) is None:
                setattr(self, name, default)
        return self


class RewardModelMethod(MethodSection):
    hyperparameters: RewardModelHyperparameters = Field(
        default_factory=RewardModelHyperparameters
    )


def head_purposes(section: RewardModelMethod) -> tuple[str, ...] | None:
    """The implicit head narrows the file purposes to pairs; the classifier takes them all."""
    return IMPLICIT_PURPOSES if section.hyperparameters.head == "implicit" else None


def head_detail(section: RewardModelMethod) -> str:
    """The head, in messages, when it narrows what the job accepts."""
    head = section.hyperparameters.head
    return f" with head {head!r}" if head != "classifier" else ""
