"""What every reward kind's evaluator takes and gives back (see `reward_service.kinds`)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from reward_service.graders import SandboxLimits
from reward_service.grading_pool import GradingPool
from reward_service.model_cache import RewardModelCache
from reward_service.protocol import ScoreItem


@dataclass
class ItemScore:
    score: float | None
    """None when the item could not be scored (then `error` says why)."""
    parts: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    truncated: bool = False


@dataclass
class Evaluation:
    results: list[ItemScore]
    """One per item, in the request's order."""
    tokens: int = 0
    """Tokens fed to models."""


@dataclass
class ScoringContext:
    """The service-wide objects an evaluator may use; built once in the app's lifespan."""

    cache: RewardModelCache
    sandbox_limits: SandboxLimits = field(default_factory=SandboxLimits)
    """CPU, memory and wall-clock limits of each `python` grader item."""
    project_id: str | None = None
    """Whose reward models a request may name (set per request); None: every project's."""
    grading: GradingPool = field(default_factory=lambda: GradingPool(8, 4, 64))
    """Where graders run (their own threads, fair between projects)."""


Evaluator = Callable[[Any, list[ScoreItem], ScoringContext], Awaitable[Evaluation]]
"""(parsed spec, items, context) → one ItemScore per item."""
