"""Text that models write, and the few places that cannot hold all of it.

A byte-level model can emit any byte: NUL and other control characters, and bytes that are
not UTF-8 (decoded as U+FFFD). All of it is data, which scoring and generation take as it is
(DESIGN §5: anything a model generates never fails a job). Two boundaries need care:

- PostgreSQL's text and jsonb hold no U+0000, and no lone surrogate (the database speaks
  UTF-8): `storable` and `storable_json` escape them, Python-style (``\\x00``, ``\\ud800``),
  where such text is stored (job events, a job's error).
- A JSON ``\\ud800`` escape with no partner decodes to a lone surrogate, which is not a
  character: UTF-8 cannot encode it, so a tokenizer or a JSON response would fail on it.
  `well_formed` reads each as U+FFFD, as a UTF-8 decoder reads bytes that are not UTF-8;
  `ModelText` is a pydantic string that does so.

An id, which the services look up in PostgreSQL, is refused instead (`Identifier`).
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import AfterValidator

_SURROGATE = re.compile("[\ud800-\udfff]")
REPLACEMENT = "\ufffd"


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def well_formed(text: str) -> str:
    """``text`` with each lone surrogate replaced by U+FFFD."""
    return text if _encodable(text) else _SURROGATE.sub(REPLACEMENT, text)


def storable(text: str) -> str:
    """``text`` as PostgreSQL can store it: NUL written ``\\x00``, a lone surrogate
    ``\\udXXX``; any other text unchanged."""
    if "\x00" in text:
        text = text.replace("\x00", "\\x00")
    if not _encodable(text):
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def storable_json(value: Any) -> Any:
    """``value`` (for a jsonb column) with `storable` applied to every string in it, keys
    included."""
    if isinstance(value, str):
        return storable(value)
    if isinstance(value, dict):
        return {storable_json(key): storable_json(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [storable_json(item) for item in value]
    return value


def _identifier(value: str) -> str:
    if "\x00" in value:
        raise ValueError("an id holds no NUL character (U+0000)")
    if not _encodable(value):
        raise ValueError("an id holds no lone surrogate (a \\ud800-\\udfff escape)")
    return value


ModelText = Annotated[str, AfterValidator(well_formed)]
"""A request's text that a model reads or wrote: any character, a lone surrogate read as
U+FFFD."""

Identifier = Annotated[str, AfterValidator(_identifier)]
"""An id looked up in PostgreSQL: a NUL or a lone surrogate in it is a validation error (a 400
naming the field), never a failed query."""
