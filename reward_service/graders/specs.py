"""Grader specs in OpenAI's shapes, one pydantic model per `type` (DESIGN.md §3 "Rewards").

Every model forbids unknown fields, so a typo is a 400 rather than a silently ignored key.
Templates, formulas and python source are checked here, when the spec is parsed, so a bad
spec fails the whole request once instead of failing every item."""

from __future__ import annotations

import ast
from collections.abc import Mapping
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from reward_service.graders.formula import FUNCTIONS, Formula, parse_formula
from reward_service.graders.similarity import METRICS, UNSUPPORTED_METRICS
from reward_service.graders.templates import check_template
from services.errors import InvalidRequest
from services.text import Identifier

SimilarityMetric = Literal["fuzzy_match", "bleu", "gleu", "rouge_1", "rouge_2", "rouge_l"]
assert set(get_args(SimilarityMetric)) == set(METRICS)
MAX_SOURCE_CHARS = 256 * 1024


class _GraderSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str = Field(min_length=1, max_length=256)


class StringCheckGrader(_GraderSpec):
    """1.0 if `operation` holds between the rendered input and reference, else 0.0.

    `eq`/`ne` compare exactly. `like` and `ilike` follow OpenAI, not SQL: `like` is true when
    the reference is a substring of the input, `ilike` the same ignoring case; `%` and `_`
    are ordinary characters."""

    type: Literal["string_check"]
    input: str
    reference: str
    operation: Literal["eq", "ne", "like", "ilike"]

    _templates = field_validator("input", "reference")(lambda value: _checked_template(value))


class TextSimilarityGrader(_GraderSpec):
    """The metric's value in [0, 1] between the rendered input and reference.

    `pass_threshold` is accepted and kept for the caller to report pass/fail; the score
    itself is the metric's value either way."""

    type: Literal["text_similarity"]
    input: str
    reference: str
    evaluation_metric: SimilarityMetric
    pass_threshold: float | None = Field(default=None, ge=0.0, le=1.0)

    _templates = field_validator("input", "reference")(lambda value: _checked_template(value))

    @field_validator("evaluation_metric", mode="before")
    @classmethod
    def _say_why_unsupported(cls, value: Any) -> Any:
        if isinstance(value, str) and value in UNSUPPORTED_METRICS:
            raise ValueError(f"{value!r} is not supported: {UNSUPPORTED_METRICS[value]}")
        return value


class PythonGrader(_GraderSpec):
    """User code defining `grade(sample, item) -> float`, run in the sandbox.

    `image_tag` is accepted for OpenAI compatibility and ignored: the code runs with this
    server's Python and installed packages."""

    type: Literal["python"]
    source: str = Field(min_length=1, max_length=MAX_SOURCE_CHARS)
    image_tag: str | None = None

    @field_validator("source")
    @classmethod
    def _defines_grade(cls, source: str) -> str:
        # compile() only parses; nothing of the user's runs in this process.
        try:
            tree = ast.parse(source, "<grader>")
        except SyntaxError as exc:
            raise ValueError(f"source does not compile: {exc.msg} (line {exc.lineno})") from exc
        if "grade" not in _top_level_names(tree):
            raise ValueError("source must define grade(sample, item) at top level")
        return source


class ScoreModelGrader(_GraderSpec):
    """A registered reward model scores (item["prompt"], rendered `input`).

    Scores pass through unchanged unless `range` is given, in which case they are clipped
    to it."""

    type: Literal["score_model"]
    model: Identifier = Field(min_length=1)
    input: str = "{{sample.output_text}}"
    range: tuple[float, float] | None = None

    _templates = field_validator("input")(lambda value: _checked_template(value))

    @field_validator("range")
    @classmethod
    def _ordered(cls, bounds: tuple[float, float] | None) -> tuple[float, float] | None:
        if bounds is not None and not bounds[0] < bounds[1]:
            raise ValueError(f"range must be [low, high] with low < high, got {list(bounds)}")
        return bounds


SubGraderSpec = Annotated[
    StringCheckGrader | TextSimilarityGrader | PythonGrader | ScoreModelGrader,
    Field(discriminator="type"),
]


class MultiGrader(_GraderSpec):
    """Sub-graders combined by `calculate_output`, a formula over their names (keys of
    `graders`), e.g. `"0.7 * correctness + 0.3 * similarity"`. Sub-graders cannot be `multi`
    themselves, as in OpenAI's API."""

    type: Literal["multi"]
    graders: dict[str, SubGraderSpec] = Field(min_length=1)
    calculate_output: str = Field(min_length=1, max_length=4096)
    _formula: Formula = PrivateAttr()

    @model_validator(mode="after")
    def _parse_formula(self) -> MultiGrader:
        for key in self.graders:
            if not key.isidentifier() or key in FUNCTIONS:
                raise ValueError(
                    f"grader key {key!r} must be an identifier other than {', '.join(FUNCTIONS)} "
                    "so that calculate_output can name it"
                )
        self._formula = parse_formula(self.calculate_output, self.graders)
        return self

    @property
    def formula(self) -> Formula:
        return self._formula


GraderSpec = Annotated[
    StringCheckGrader | TextSimilarityGrader | PythonGrader | ScoreModelGrader | MultiGrader,
    Field(discriminator="type"),
]
_ADAPTER: TypeAdapter[GraderSpec] = TypeAdapter(GraderSpec)
_GRADER_TYPES = frozenset(
    ("string_check", "text_similarity", "python", "score_model", "multi")
)


def parse_grader_spec(data: Mapping[str, Any]) -> GraderSpec:
    """Validate a JSON grader spec; any problem is an InvalidRequest naming the field."""
    try:
        return _ADAPTER.validate_python(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = _field_path(first["loc"], first.get("ctx", {}).get("error"))
        message = first["msg"].removeprefix("Value error, ")
        if where and not message.startswith(where.rsplit(".", 1)[-1]):
            message = f"{where}: {message}"
        more = f" (and {exc.error_count() - 1} more problems)" if exc.error_count() > 1 else ""
        raise InvalidRequest(
            f"invalid grader: {message}{more}", param=where or None, code="invalid_grader"
        ) from exc


def _field_path(loc: tuple[int | str, ...], cause: Any) -> str:
    """Dotted path of the failing field, without pydantic's union tags (`string_check`)."""
    parts = [str(part) for index, part in enumerate(loc)
             if not (part in _GRADER_TYPES and (index == 0 or loc[index - 1] != "graders"))]
    if isinstance(cause, InvalidRequest) and cause.param:
        parts.append(cause.param)
    return ".".join(parts)


def _checked_template(value: str) -> str:
    check_template(value)
    return value


def _top_level_names(tree: ast.Module) -> set[str]:
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(t.id for t in targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.Import | ast.ImportFrom):
            names.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
    return names
