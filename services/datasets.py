"""JSONL row shapes per file purpose (DESIGN.md §3), validated line by line.

The api validates an upload completely before storing anything; the trainer reads rows back
with the same models, so both sides agree on what a row is."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from services.errors import InvalidRequest

MAX_REPORTED_LINES = 5


class _Row(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: str


class MessagesRow(_Row):
    messages: list[ChatMessage] = Field(min_length=1)


class PromptCompletionRow(_Row):
    prompt: str = Field(min_length=1)
    completion: str


def _a_preference(chosen: Any, rejected: Any) -> None:
    if chosen == rejected:
        raise ValueError("chosen and rejected are identical; a pair must prefer one response "
                         "over another")


class PreferenceRow(_Row):
    prompt: str = Field(min_length=1)
    chosen: str
    rejected: str

    @model_validator(mode="after")
    def _differ(self) -> PreferenceRow:
        _a_preference(self.chosen, self.rejected)
        return self


class DpoInput(BaseModel):
    model_config = ConfigDict(extra="allow")
    messages: list[ChatMessage] = Field(min_length=1)


class OpenAIPreferenceRow(_Row):
    input: DpoInput
    preferred_output: list[ChatMessage] = Field(min_length=1)
    non_preferred_output: list[ChatMessage] = Field(min_length=1)

    @model_validator(mode="after")
    def _differ(self) -> OpenAIPreferenceRow:
        _a_preference(self.preferred_output, self.non_preferred_output)
        return self


class PromptRow(BaseModel):
    """Extra fields (e.g. "answer") are kept: graders may reference them."""

    model_config = ConfigDict(extra="allow")
    prompt: str = Field(min_length=1)


class MessagesPromptRow(BaseModel):
    model_config = ConfigDict(extra="allow")
    messages: list[ChatMessage] = Field(min_length=1)


class RatingRow(_Row):
    prompt: str = Field(min_length=1)
    response: str
    scores: dict[str, float] = Field(min_length=1)


ROW_SHAPES: dict[str, tuple[type[BaseModel], ...]] = {
    "supervised": (MessagesRow, PromptCompletionRow),
    "preference": (PreferenceRow, OpenAIPreferenceRow),
    "prompts": (PromptRow, MessagesPromptRow),
    "ratings": (RatingRow,),
}
ROW_SHAPES["fine-tune"] = ROW_SHAPES["supervised"] + ROW_SHAPES["preference"]
PURPOSES = tuple(ROW_SHAPES)

SHAPE_TEXT = {
    "supervised": '{"messages": [{"role", "content"}, ...]} or {"prompt", "completion"}',
    "preference": '{"prompt", "chosen", "rejected"} or '
    '{"input": {"messages"}, "preferred_output", "non_preferred_output"}',
    "prompts": '{"prompt", ...extra fields} or {"messages", ...extra fields}',
    "ratings": '{"prompt", "response", "scores": {name: float}}',
}
SHAPE_TEXT["fine-tune"] = SHAPE_TEXT["supervised"] + " or " + SHAPE_TEXT["preference"]


def check_purpose(purpose: str) -> None:
    if purpose not in ROW_SHAPES:
        raise InvalidRequest(
            f"purpose must be one of {', '.join(PURPOSES)}, got {purpose!r}", param="purpose"
        )


def _row_problem(line: bytes, shapes: tuple[type[BaseModel], ...]) -> str | None:
    """None if the line is a valid row of one of the shapes, else what is wrong with it."""
    try:
        value = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        return f"not valid JSON ({exc.msg if hasattr(exc, 'msg') else exc})"
    except RecursionError:
        return "JSON nested too deeply"
    if not isinstance(value, dict):
        return f"expected a JSON object, got {type(value).__name__}"
    problems = []
    for shape in shapes:
        try:
            shape.model_validate(value)
            return None
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "row"
            problems.append(f"{where}: {first['msg']}")
    return problems[0] if len(problems) == 1 else "; ".join(sorted(set(problems)))


def validate_lines(lines: Iterable[bytes], purpose: str) -> int:
    """Validate every line; return the row count or raise InvalidRequest naming bad lines."""
    check_purpose(purpose)
    shapes = ROW_SHAPES[purpose]
    bad: list[str] = []
    rows = 0
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        rows += 1
        problem = _row_problem(line, shapes)
        if problem is not None:
            bad.append(f"line {number}: {problem}")
            if len(bad) == MAX_REPORTED_LINES:
                break
    if bad:
        raise InvalidRequest(
            f"invalid {purpose} file: {'; '.join(bad)}. Each line must be {SHAPE_TEXT[purpose]}",
            param="file",
            code="invalid_file",
        )
    if rows == 0:
        raise InvalidRequest("file has no rows; upload one JSON object per line", param="file")
    return rows


def read_rows(lines: Iterable[bytes | str]) -> Iterator[dict[str, Any]]:
    for line in lines:
        if line.strip():
            yield json.loads(line)
