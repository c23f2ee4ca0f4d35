"""`{{sample.output_text}}` and `{{item.<field>}}` references in grader strings.

`sample` is the response being graded (`{"output_text": response}`); `item` is the prompt
row's fields. Nested fields use dots (`{{item.meta.answer}}`), list elements their index
(`{{item.choices.0}}`), and whitespace inside the braces is allowed (`{{ item.answer }}`).
Strings render as they are; other values as JSON (`3`, `true`, `[1, 2]`)."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from services.errors import InvalidRequest

_REFERENCE = re.compile(r"\{\{\s*([^{}]*?)\s*\}\}")
SAMPLE_FIELDS = frozenset({"output_text"})


class TemplateError(InvalidRequest, ValueError):
    """A malformed reference (found when the spec is parsed) or a missing field (per item).

    It is a ValueError too so that pydantic validators turn it into a validation error."""


def check_template(template: str) -> None:
    """Raise TemplateError if any reference is neither `sample.output_text` nor `item.<path>`."""
    for match in _REFERENCE.finditer(template):
        root, *path = match.group(1).split(".")
        if root == "sample" and len(path) == 1 and path[0] in SAMPLE_FIELDS:
            continue
        if root == "item" and path and all(path):
            continue
        raise TemplateError(
            f"template reference {match.group(0)!r} must be {{{{sample.output_text}}}} or "
            "{{item.<field>}} (nested fields with dots)",
            code="invalid_template",
        )


def render_template(template: str, sample: Mapping[str, Any], item: Mapping[str, Any]) -> str:
    """Substitute every reference; a missing field raises TemplateError naming it."""
    context = {"sample": sample, "item": item}

    def substitute(match: re.Match[str]) -> str:
        value = _lookup(match.group(1).split("."), context, match.group(0))
        return value if isinstance(value, str) else json.dumps(value)

    return _REFERENCE.sub(substitute, template)


def _lookup(path: list[str], context: Mapping[str, Any], reference: str) -> Any:
    value: Any = context
    for depth, key in enumerate(path):
        if isinstance(value, Mapping) and key in value:
            value = value[key]
        elif isinstance(value, list) and key.isdigit() and int(key) < len(value):
            value = value[int(key)]
        else:
            owner = ".".join(path[:depth]) or "context"
            raise TemplateError(
                f"{owner} has no field {key!r} (referenced by {reference})",
                code="missing_field",
            )
    return value
