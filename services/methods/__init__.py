"""The `method` object of a fine-tuning job: its type, and that type's section with its strictly
validated hyperparameters.

Shared by the api (validation at create time) and the trainer (which reads the same models
back from the job row), so both sides agree on names, defaults and ranges. Each method type is
one module here and one entry in `METHODS`; `Method`, the file purposes and row shapes a job
accepts and the way messages name a job are derived from that table.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from pydantic import GetJsonSchemaHandler, ValidationError, create_model, model_validator
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema

from services.datasets import PURPOSE_SHAPES
from services.methods import dpo, reinforcement, reward_model, supervised, value_model
from services.methods.base import (
    LoraConfig,
    MethodSection,
    OptimizerHyperparameters,
    RewardSpec,
    StrictModel,
    TrainingHyperparameters,
)
from services.methods.dpo import DpoHyperparameters, DpoMethod
from services.methods.reinforcement import (
    AlgorithmHyperparameters,
    ReinforcementHyperparameters,
    ReinforcementMethod,
)
from services.methods.reward_model import (
    IMPLICIT_DEFAULTS,
    IMPLICIT_ONLY,
    IMPLICIT_PURPOSES,
    RewardModelHyperparameters,
    RewardModelMethod,
)
from services.methods.supervised import SupervisedHyperparameters, SupervisedMethod
from services.methods.value_model import ValueModelHyperparameters, ValueModelMethod


@dataclass(frozen=True)
class MethodType:
    """One entry of the table: the section a method type reads, and the files it trains on."""

    section: type[MethodSection]
    """The model of `method.<type>`."""
    purposes: tuple[str, ...]
    """The purposes its training and validation files may have."""
    shapes: tuple[str, ...]
    """The row shapes (`services.datasets.SHAPES`) those files may hold; its module's
    `SHAPES`."""
    narrow_purposes: Callable[[Any], tuple[str, ...] | None] = lambda section: None
    """The purposes a setting of the (validated) section narrows those to; None: all of them."""
    detail: Callable[[Any], str] = lambda section: ""
    """What of the section messages name after the type (" with head 'implicit'")."""


METHODS: dict[str, MethodType] = {
    "supervised": MethodType(SupervisedMethod, ("supervised", "fine-tune"), supervised.SHAPES),
    "reward_model": MethodType(RewardModelMethod, ("preference", "ratings", "fine-tune"),
                               reward_model.SHAPES, narrow_purposes=reward_model.head_purposes,
                               detail=reward_model.head_detail),
    "value_model": MethodType(ValueModelMethod, ("prompts", "fine-tune"), value_model.SHAPES),
    "reinforcement": MethodType(ReinforcementMethod, ("prompts", "fine-tune"),
                                reinforcement.SHAPES),
    "dpo": MethodType(DpoMethod, ("preference", "fine-tune"), dpo.SHAPES),
}
METHOD_SECTIONS: dict[str, type[MethodSection]] = {
    name: entry.section for name, entry in METHODS.items()
}
"""The section each method type reads its hyperparameters from, keyed by `method.type`."""
METHOD_PURPOSES: dict[str, tuple[str, ...]] = {
    name: entry.purposes for name, entry in METHODS.items()
}
"""Which file purposes each method accepts for its training and validation files."""


class MethodBase(StrictModel):
    """What `Method` has whatever the table holds; `Method` adds a section field per entry."""

    type: str

    @model_validator(mode="before")
    @classmethod
    def _fill_section(cls, data: Any) -> Any:
        """Only the section named by `type` may be given. One left out is validated as an empty
        one: defaults fill it, and a required field is reported at its own path
        (method.value_model.hyperparameters.reward)."""
        if not isinstance(data, dict):
            return data
        kind = data.get("type")
        if not isinstance(kind, str) or kind not in METHODS:
            return data  # the type's own error names the allowed types
        for name in METHODS:
            if name != kind and data.get(name) is not None:
                raise ValueError(f"method.{name} was given but method.type is {kind!r}; "
                                 f"put the hyperparameters in method.{kind}")
        return data if data.get(kind) is not None else {**data, kind: {"hyperparameters": {}}}

    @classmethod
    def __get_pydantic_json_schema__(cls, core_schema: CoreSchema,
                                     handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        """The schema says what `_fill_section` enforces: one branch per type, in which the
        other sections are null and the type's own section is required when defaults alone
        cannot fill it (value_model's `reward`)."""
        schema = handler(core_schema)
        target = handler.resolve_ref_schema(schema)
        sections = target.get("properties", {})
        branches = []
        for kind, entry in METHODS.items():
            if kind not in sections:
                continue
            try:
                entry.section.model_validate({"hyperparameters": {}})
                needed = False
            except ValidationError:
                needed = True
            own = sections[kind]["anyOf"][0] if needed else sections[kind]
            branches.append({
                "properties": {"type": {"const": kind}, kind: own,
                               **{other: {"type": "null"} for other in METHODS if other != kind}},
                "required": ["type", kind] if needed else ["type"]})
        if branches:
            target["oneOf"] = branches
        return schema

    @property
    def section(self) -> MethodSection:
        section: MethodSection | None = getattr(self, self.type)
        assert section is not None  # _fill_section fills it
        return section

    @property
    def hyperparameters(self) -> OptimizerHyperparameters:
        return self.section.hyperparameters


if TYPE_CHECKING:  # type checkers see the shared surface; the fields are built from METHODS
    Method = MethodBase
else:
    Method = create_model(
        "Method",
        __base__=MethodBase,
        __module__=__name__,
        __doc__="""`{"type": "reward_model", "reward_model": {"hyperparameters": {...}}}` as in
        OpenAI's API.

        A union tagged by `type`: only the section named by `type` may be given (it is filled
        with defaults when left out). It is one model with a section per type rather than a
        pydantic discriminated union so that errors keep OpenAI's paths (`method.type`,
        `method.supervised.hyperparameters.n_epochs`) without the tag repeated in them.""",
        type=(Literal[tuple(METHODS)], ...),
        **{name: (entry.section | None, None) for name, entry in METHODS.items()},
    )


def allowed_purposes(method: MethodBase) -> tuple[str, ...]:
    """The file purposes a job with this method accepts (its type's, narrowed by its section)."""
    entry = METHODS[method.type]
    return entry.narrow_purposes(method.section) or entry.purposes


def allowed_shapes(method: MethodBase) -> tuple[str, ...]:
    """The row shapes a job with this method accepts: its type's that a file of one of its
    allowed purposes can hold (the implicit reward head's purposes leave pairs only)."""
    held = {shape for purpose in allowed_purposes(method) for shape in PURPOSE_SHAPES[purpose]}
    return tuple(shape for shape in METHODS[method.type].shapes if shape in held)


def reward_spec(method: MethodBase) -> tuple[dict[str, Any], str] | None:
    """The reward spec a job with this method scores with, and its path in the request
    (`method.reinforcement.reward`); None for methods that score nothing."""
    section = method.section
    for owner, path in ((section, f"method.{method.type}.reward"),
                        (section.hyperparameters,
                         f"method.{method.type}.hyperparameters.reward")):
        spec = getattr(owner, "reward", None)
        if isinstance(spec, dict):
            return spec, path
    return None


def named_models(method: MethodBase) -> list[tuple[str, str, tuple[str, ...]]]:
    """(model id, its path in the request, the kinds it may be) of every registered model the
    method's hyperparameters name (their class's `named_model_fields`): PPO's critic_model, a
    DPO job's reference."""
    hp = method.hyperparameters
    fields: dict[str, tuple[str, ...]] = getattr(type(hp), "named_model_fields", {})
    return [(model_id, f"method.{method.type}.hyperparameters.{name}", kinds)
            for name, kinds in fields.items()
            if isinstance(model_id := getattr(hp, name, None), str)]


def describe(method: MethodBase) -> str:
    """"a reward_model job" (with what of its section narrows what the job accepts)."""
    return f"a {method.type} job{METHODS[method.type].detail(method.section)}"


__all__ = [
    "IMPLICIT_DEFAULTS",
    "IMPLICIT_ONLY",
    "IMPLICIT_PURPOSES",
    "METHODS",
    "METHOD_PURPOSES",
    "METHOD_SECTIONS",
    "AlgorithmHyperparameters",
    "DpoHyperparameters",
    "DpoMethod",
    "LoraConfig",
    "Method",
    "MethodBase",
    "MethodSection",
    "MethodType",
    "OptimizerHyperparameters",
    "ReinforcementHyperparameters",
    "ReinforcementMethod",
    "RewardModelHyperparameters",
    "RewardModelMethod",
    "RewardSpec",
    "StrictModel",
    "SupervisedHyperparameters",
    "SupervisedMethod",
    "TrainingHyperparameters",
    "ValueModelHyperparameters",
    "ValueModelMethod",
    "allowed_purposes",
    "allowed_shapes",
    "describe",
    "named_models",
    "reward_spec",
]
