"""The `method` object of a fine-tuning job: its type and strictly validated hyperparameters.

Shared by the api (validation at create time) and the trainer (which reads the same models
back from the job row), so both sides agree on names, defaults and ranges.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


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


IMPLICIT_ONLY = ("beta", "reference", "sft_coefficient")
"""Hyperparameters of the implicit head only; given with the classifier head they are refused."""
IMPLICIT_DEFAULTS: dict[str, Any] = {"beta": 0.5, "reference": "none", "sft_coefficient": 1.0}


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


class RewardModelMethod(StrictModel):
    hyperparameters: RewardModelHyperparameters = Field(
        default_factory=RewardModelHyperparameters
    )


class ValueModelHyperparameters(TrainingHyperparameters):
    """A value model for Value Augmented Sampling (Han et al. 2024): completions of the
    prompts sampled from the frozen base model, scored with `reward` by the reward service,
    fit by TD(λ). The optimisation knobs count sampled completions, not prompt rows."""

    # "lambda" is a Python keyword: the field is lambda_, read and written as "lambda".
    model_config = ConfigDict(extra="forbid", serialize_by_alias=True)

    reward: dict[str, Any]
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

    @field_validator("reward")
    @classmethod
    def _reward_spec(cls, reward: dict[str, Any]) -> dict[str, Any]:
        if not isinstance(reward.get("type"), str):
            raise ValueError(  # noqa: TRY004  (pydantic reports ValueError, not TypeError)
                "reward must be a reward spec object with a string 'type' "
                "(reward_model, ensemble, string_check, python, ...)")
        return reward

    @model_validator(mode="after")
    def _room_to_sample(self) -> ValueModelHyperparameters:
        if self.max_new_tokens >= self.max_seq_length:
            raise ValueError(f"max_new_tokens ({self.max_new_tokens}) must be less than "
                             f"max_seq_length ({self.max_seq_length}), which bounds prompt "
                             "and completion together")
        return self


class ValueModelMethod(StrictModel):
    hyperparameters: ValueModelHyperparameters


MethodSection = SupervisedMethod | RewardModelMethod | ValueModelMethod
METHOD_SECTIONS: dict[str, type[MethodSection]] = {
    "supervised": SupervisedMethod,
    "reward_model": RewardModelMethod,
    "value_model": ValueModelMethod,
}
"""The section each method type reads its hyperparameters from, keyed by `method.type`."""


class Method(StrictModel):
    """`{"type": "reward_model", "reward_model": {"hyperparameters": {...}}}` as in OpenAI's API.

    A union tagged by `type`: only the section named by `type` may be given (it is filled with
    defaults when left out). It is one model with a section per type rather than a pydantic
    discriminated union so that errors keep OpenAI's paths (`method.type`,
    `method.supervised.hyperparameters.n_epochs`) without the tag repeated in them.
    """

    type: Literal["supervised", "reward_model", "value_model"]
    supervised: SupervisedMethod | None = None
    reward_model: RewardModelMethod | None = None
    value_model: ValueModelMethod | None = None

    @model_validator(mode="before")
    @classmethod
    def _fill_section(cls, data: Any) -> Any:
        """Only the section named by `type` may be given. One left out is validated as an empty
        one: defaults fill it, and a required hyperparameter is reported at its own path
        (method.value_model.hyperparameters.reward)."""
        if not isinstance(data, dict):
            return data
        kind = data.get("type")
        if not isinstance(kind, str) or kind not in METHOD_SECTIONS:
            return data  # the type's own error names the allowed types
        for name in METHOD_SECTIONS:
            if name != kind and data.get(name) is not None:
                raise ValueError(f"method.{name} was given but method.type is {kind!r}; "
                                 f"put the hyperparameters in method.{kind}")
        return data if data.get(kind) is not None else {**data, kind: {"hyperparameters": {}}}

    @property
    def hyperparameters(
        self,
    ) -> SupervisedHyperparameters | RewardModelHyperparameters | ValueModelHyperparameters:
        section: MethodSection | None = getattr(self, self.type)
        assert section is not None
        return section.hyperparameters


# Which file purposes each method accepts for its training and validation files.
METHOD_PURPOSES: dict[str, tuple[str, ...]] = {
    "supervised": ("supervised", "fine-tune"),
    "reward_model": ("preference", "ratings", "fine-tune"),
    "value_model": ("prompts",),
}

IMPLICIT_PURPOSES = ("preference", "fine-tune")
"""The implicit reward head scores a response by its likelihood: it trains on pairs only."""


def allowed_purposes(method: Method) -> tuple[str, ...]:
    """The file purposes a job with this method accepts (its type's, narrowed by its head)."""
    hp = method.hyperparameters
    if isinstance(hp, RewardModelHyperparameters) and hp.head == "implicit":
        return IMPLICIT_PURPOSES
    return METHOD_PURPOSES[method.type]


def describe(method: Method) -> str:
    """"a reward_model job" (with its head when it narrows what the job accepts)."""
    hp = method.hyperparameters
    if isinstance(hp, RewardModelHyperparameters) and hp.head != "classifier":
        return f"a {method.type} job with head {hp.head!r}"
    return f"a {method.type} job"
