"""What grading one item produces: a score, or the reason there is none."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class GradeOutcome:
    """One item's result. Exactly one of `score` and `error` is set.

    `parts` holds a `multi` grader's sub-grader scores by name (those that scored), so the
    caller can report them next to the combined score; other graders leave it empty."""

    score: float | None = None
    error: str | None = None
    parts: dict[str, float] = field(default_factory=dict)

    @classmethod
    def failed(cls, error: str, parts: dict[str, float] | None = None) -> GradeOutcome:
        return cls(score=None, error=error, parts=dict(parts or {}))
