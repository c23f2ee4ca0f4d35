"""Request and response models of the reward service (`/v1/score`, `/v1/reward_models`).

A reward spec is a discriminated union on `type`. Every kind subclasses `SpecBase` (which
carries the post-processing every kind shares: `normalize` and `clip`) and is registered once
in `reward_service.kinds.REWARD_KINDS`, which also names the function that evaluates it.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from services.text import Identifier, ModelText


class ChatMessage(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: ModelText


class ScoreItem(BaseModel):
    """One (prompt, response) pair: either both strings, or an OpenAI chat whose last message
    is the assistant's response. `item` holds extra fields graders may reference. The text
    may hold any character a model writes (`services.text`)."""

    model_config = ConfigDict(extra="forbid")
    prompt: ModelText | None = None
    response: ModelText | None = None
    messages: list[ChatMessage] | None = Field(default=None, min_length=1)
    item: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _one_shape(self) -> ScoreItem:
        if self.messages is not None:
            if self.prompt is not None or self.response is not None:
                raise ValueError("give either messages or prompt and response, not both")
            if self.messages[-1].role != "assistant":
                raise ValueError("the last message must be the assistant's response, got role "
                                 f"{self.messages[-1].role!r}")
        elif self.prompt is None or self.response is None:
            raise ValueError("an item needs prompt and response (strings) or messages")
        return self

    @property
    def response_text(self) -> str:
        return self.messages[-1].content if self.messages is not None else str(self.response)


class RunningNormalize(BaseModel):
    """Running mean/std normalisation (PPO-max): the service keeps Welford statistics per key,
    updates them with each request's scores, then returns (score - mean) / (std + epsilon)."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["running"]
    key: str | None = Field(default=None, min_length=1, max_length=200)
    """Statistics to share; default: the spec itself (everything but normalize and clip)."""
    epsilon: float = Field(default=1e-8, gt=0)


class SpecBase(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: str
    normalize: RunningNormalize | None = None
    clip: tuple[float, float] | None = None
    """[lo, hi] applied last, after normalisation."""

    @model_validator(mode="after")
    def _ordered_clip(self) -> SpecBase:
        if self.clip is not None and self.clip[0] > self.clip[1]:
            raise ValueError(f"clip must be [lo, hi] with lo <= hi, got {list(self.clip)}")
        return self

    def statistics_key(self) -> str:
        if self.normalize is not None and self.normalize.key is not None:
            return self.normalize.key
        return self.model_dump_json(exclude={"normalize", "clip"})


ObjectiveWeights = dict[str, float]


class RewardModelSpec(SpecBase):
    """A registered reward model (kind `reward_model`). Its K outputs are objectives; the score
    is their weighted sum. Weights default to the row's metadata `objective_weights`, else equal
    weights 1/K (the mean; 1 for a single-output model). Objectives not named in explicit
    weights get weight 0."""

    type: Literal["reward_model"]
    model: Identifier = Field(min_length=1)
    objective_weights: ObjectiveWeights | None = None


class EnsembleSpec(SpecBase):
    """Reward model ensembles (Coste et al., "Reward Model Ensembles Help Mitigate
    Overoptimization"): members listed by id, or one registered `reward_ensemble`. Each member's
    scalar is its weighted objective sum (as in `reward_model`); they aggregate by `mean`, `min`
    (worst-case optimisation) or `uwo` (mean - uwo_lambda * variance, population variance over
    the members)."""

    type: Literal["ensemble"]
    models: list[Identifier] | None = Field(default=None, min_length=2, max_length=16)
    model: Identifier | None = Field(default=None, min_length=1)
    aggregation: Literal["mean", "min", "uwo"] = "mean"
    uwo_lambda: float | None = Field(default=None, ge=0)
    objective_weights: ObjectiveWeights | None = None

    @model_validator(mode="after")
    def _members(self) -> EnsembleSpec:
        if (self.models is None) == (self.model is None):
            raise ValueError("give exactly one of models (a list of reward model ids) or model "
                             "(a registered reward_ensemble id)")
        if self.models is not None and len(set(self.models)) != len(self.models):
            raise ValueError(f"models must be distinct, got {self.models}")
        if self.aggregation == "uwo" and self.uwo_lambda is None:
            raise ValueError("aggregation 'uwo' needs uwo_lambda (>= 0), the weight of the "
                             "members' variance")
        return self


class ScoreRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    items: list[ScoreItem] = Field(min_length=1, max_length=4096)
    reward: dict[str, Any] = Field(
        description="A reward spec: {'type': 'reward_model', 'model', 'objective_weights'?} or "
                    "{'type': 'ensemble', 'models' | 'model', 'aggregation', 'uwo_lambda'?}, "
                    "each with optional 'normalize': {'type': 'running'} and 'clip': [lo, hi].")


class ScoreResult(BaseModel):
    index: int
    score: float | None
    parts: dict[str, float] = Field(default_factory=dict)
    """Per objective (reward_model) or per member (ensemble), before normalize and clip."""
    error: ModelText | None = None
    """Why the item has no score; it may quote the item's text, or a python grader's."""
    truncated: bool = Field(default=False, description=(
        "The item was cut to fit the model (the prompt keeps its end, the response its start). "
        "An implicit (log-probability) reward model then scores only the response tokens "
        "kept, which raises the reward: compare it with care."))


class Usage(BaseModel):
    tokens: int
    """Tokens fed to models (every member of an ensemble counts)."""
    ms: float


class ScoreResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[ScoreResult]
    usage: Usage


class RewardModelObject(BaseModel):
    id: str
    object: Literal["model"] = "model"
    kind: Literal["reward_model", "reward_ensemble"]
    created: int
    owned_by: str
    base_model: str | None = None
    objectives: list[str] | None = None
    head: str | None = None
    """How the reward is read (as the training job recorded it): a sequence-classification head,
    or the implicit log-probability of the response; None when not recorded."""


class RewardModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[RewardModelObject]
