"""JSONL row shapes per file purpose (DESIGN.md §3), validated line by line, and the shapes a
file holds, detected and named.

A shape is one way of writing a row: OpenAI's (`chat` messages, its DPO shape, its
reinforcement fine-tuning prompts `openai_rft`) and TRL's, standard (strings) and
conversational (message lists). Each shape is of one kind — supervised, preference, prompts
or ratings — and a file holds rows of one kind, in any of its purpose's shapes of that kind
(`{"prompt", "completion"}` and `{"messages"}` rows together, say). The api validates an
upload completely before storing anything and keeps the shapes it found with the file; a job
refuses a file whose shapes its method does not train on (`services.methods`); the trainer
reads rows back with the same shapes, so both sides agree on what a row is."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

from services.errors import InvalidRequest

MAX_REPORTED_LINES = 5


class _Row(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _OpenRow(BaseModel):
    """Extra fields (e.g. "answer") are kept: graders read them as `{{item.answer}}`."""

    model_config = ConfigDict(extra="allow")


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: str


def _ending_with(role: str, why: str) -> Callable[[list[ChatMessage]], list[ChatMessage]]:
    def check(messages: list[ChatMessage]) -> list[ChatMessage]:
        if messages[-1].role != role:
            raise ValueError(f"the last message must be the {role}'s ({why}), got role "
                             f"{messages[-1].role!r}")
        return messages
    return check


Conversation = Annotated[list[ChatMessage], Field(min_length=1)]
Answered = Annotated[Conversation, AfterValidator(
    _ending_with("assistant", "the turn supervised training learns"))]
Asked = Annotated[Conversation, AfterValidator(
    _ending_with("user", "the turn the model answers"))]
Tools = list[dict[str, Any]] | None
"""OpenAI's `tools`, handed to the chat template where prompts and chats are rendered."""


def _a_preference(chosen: Any, rejected: Any) -> None:
    if chosen == rejected:
        raise ValueError("chosen and rejected are identical; a pair must prefer one response "
                         "over another")


class MessagesRow(_Row):
    messages: Answered
    tools: Tools = None


class PromptCompletionRow(_Row):
    prompt: str = Field(min_length=1)
    completion: str


class ConversationalPromptCompletionRow(_Row):
    """TRL's: the loss covers the completion's assistant turns only."""

    prompt: Conversation
    completion: Answered
    tools: Tools = None


class TextRow(_Row):
    """TRL's language modelling row: the loss covers every token."""

    text: str = Field(min_length=1)


class PreferenceRow(_Row):
    prompt: str = Field(min_length=1)
    chosen: str
    rejected: str

    @model_validator(mode="after")
    def _differ(self) -> PreferenceRow:
        _a_preference(self.chosen, self.rejected)
        return self


class ConversationalPreferenceRow(_Row):
    prompt: Conversation
    chosen: Answered
    rejected: Answered

    @model_validator(mode="after")
    def _differ(self) -> ConversationalPreferenceRow:
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


class PromptRow(_OpenRow):
    prompt: str = Field(min_length=1)


class ConversationalPromptRow(_OpenRow):
    prompt: Conversation


class RftRow(_OpenRow):
    """OpenAI's reinforcement fine-tuning row: `messages` and `tools` are reserved, every other
    field is the grader's `item`."""

    messages: Asked
    tools: Tools = None


class RatingRow(_Row):
    prompt: str = Field(min_length=1)
    response: str
    scores: dict[str, float] = Field(min_length=1)


@dataclass(frozen=True)
class RowShape:
    model: type[BaseModel]
    kind: Literal["supervised", "preference", "prompts", "ratings"]
    """What a job trains on rows of this shape; one file holds rows of one kind."""
    looks: str
    """The row, as messages show it."""


SHAPES: dict[str, RowShape] = {
    "chat": RowShape(MessagesRow, "supervised",
                     '{"messages": [{"role", "content"}, ..., an assistant turn]}'),
    "prompt_completion": RowShape(PromptCompletionRow, "supervised",
                                  '{"prompt", "completion"}'),
    "conversational_prompt_completion": RowShape(
        ConversationalPromptCompletionRow, "supervised",
        '{"prompt": [messages], "completion": [..., an assistant turn]}'),
    "text": RowShape(TextRow, "supervised", '{"text"}'),
    "preference": RowShape(PreferenceRow, "preference", '{"prompt", "chosen", "rejected"}'),
    "conversational_preference": RowShape(
        ConversationalPreferenceRow, "preference",
        '{"prompt": [messages], "chosen": [messages], "rejected": [messages]}'),
    "openai_preference": RowShape(
        OpenAIPreferenceRow, "preference",
        '{"input": {"messages"}, "preferred_output", "non_preferred_output"}'),
    "prompt_only": RowShape(PromptRow, "prompts", '{"prompt", ...extra fields}'),
    "conversational_prompt_only": RowShape(ConversationalPromptRow, "prompts",
                                           '{"prompt": [messages], ...extra fields}'),
    "openai_rft": RowShape(RftRow, "prompts",
                           '{"messages": [..., a user turn], "tools"?, ...extra fields}'),
    "ratings": RowShape(RatingRow, "ratings", '{"prompt", "response", "scores": {name: float}}'),
}
"""Every row shape alignd reads, by the name files and jobs report."""

CHAT_SHAPES = ("chat", "conversational_prompt_completion", "conversational_preference",
               "conversational_prompt_only", "openai_rft", "openai_preference")
"""The shapes whose rows are messages: a model's chat template renders them."""

PURPOSE_SHAPES: dict[str, tuple[str, ...]] = {  # purposes named for a kind take its shapes
    kind: tuple(name for name, shape in SHAPES.items() if shape.kind == kind)
    for kind in ("supervised", "preference", "prompts", "ratings")
}
PURPOSE_SHAPES["fine-tune"] = (  # OpenAI's purpose: its SFT, DPO and RFT files (and TRL's)
    *PURPOSE_SHAPES["supervised"], *PURPOSE_SHAPES["preference"], "openai_rft")
PURPOSES = tuple(PURPOSE_SHAPES)


@dataclass(frozen=True)
class FileRows:
    count: int
    """Rows (non-blank lines)."""
    shapes: tuple[str, ...]
    """The shapes found, in `SHAPES` order; all of one kind."""


def check_purpose(purpose: str) -> None:
    if purpose not in PURPOSE_SHAPES:
        raise InvalidRequest(
            f"purpose must be one of {', '.join(PURPOSES)}, got {purpose!r}", param="purpose"
        )


def _parse(line: bytes) -> tuple[dict[str, Any] | None, str]:
    """(the row, "") or (None, why the line is not a JSON object)."""
    try:
        value = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        return None, f"not valid JSON ({exc.msg if hasattr(exc, 'msg') else exc})"
    except RecursionError:
        return None, "JSON nested too deeply"
    if not isinstance(value, dict):
        return None, f"expected a JSON object, got {type(value).__name__}"
    return value, ""


def _shape_of(row: dict[str, Any], names: tuple[str, ...]) -> tuple[str | None, str]:
    """(the shape the row is, "") or (None, what is wrong with it as the shapes it is closest
    to: those it misses by the fewest errors). The shapes of a purpose never overlap."""
    misses: dict[str, tuple[int, list[str]]] = {}  # problem → (errors, shapes it is of)
    for name in names:
        try:
            SHAPES[name].model.model_validate(row)
            return name, ""
        except ValidationError as exc:
            errors = exc.errors()
            where = ".".join(str(p) for p in errors[0]["loc"]) or "row"
            misses.setdefault(f"{where}: {errors[0]['msg']}", (len(errors), []))[1].append(name)
    fewest = min(count for count, _ in misses.values())
    return None, "; ".join(f"{problem} (as {', '.join(shapes)})"
                           for problem, (count, shapes) in misses.items() if count == fewest)


def _line_problem(line: bytes, number: int, names: tuple[str, ...],
                  found: dict[str, int]) -> tuple[str, bool]:
    """(what is wrong with the line, "" if nothing; whether it is a row of another kind than
    the file's, which its first valid row sets), recording its shape in ``found`` (shape →
    first line) when it is of the file's kind."""
    row, problem = _parse(line)
    shape = None
    if row is not None:
        shape, problem = _shape_of(row, names)
    if shape is None:
        return problem, False
    first = next(iter(found.items()), None)
    if first is not None and SHAPES[first[0]].kind != SHAPES[shape].kind:
        return (f"a {SHAPES[shape].kind} row ({shape}), but line {first[1]} is a "
                f"{SHAPES[first[0]].kind} row ({first[0]})"), True
    found.setdefault(shape, number)
    return "", False


def validate_lines(lines: Iterable[bytes], purpose: str) -> FileRows:
    """Validate every line; return the rows' count and shapes, or raise InvalidRequest naming
    the bad lines (a file of rows of several kinds is refused too)."""
    check_purpose(purpose)
    names = PURPOSE_SHAPES[purpose]
    bad: list[str] = []
    found: dict[str, int] = {}
    rows, only_kinds = 0, True
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        rows += 1
        problem, other_kind = _line_problem(line, number, names, found)
        if problem:
            bad.append(f"line {number}: {problem}")
            only_kinds = only_kinds and other_kind
            if len(bad) == MAX_REPORTED_LINES:
                break
    if bad:
        expected = ("A file holds rows of one kind; upload each kind as a file of its own"
                    if only_kinds else "Each line must be one of: " + "; ".join(
                        f"{name} {SHAPES[name].looks}" for name in names))
        raise InvalidRequest(f"invalid {purpose} file: {'; '.join(bad)}. {expected}",
                             param="file", code="invalid_file")
    if rows == 0:
        raise InvalidRequest("file has no rows; upload one JSON object per line", param="file")
    return FileRows(rows, tuple(name for name in names if name in found))


def read_rows(lines: Iterable[bytes | str]) -> Iterator[dict[str, Any]]:
    for line in lines:
        if line.strip():
            yield json.loads(line)
