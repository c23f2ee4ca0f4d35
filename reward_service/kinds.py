"""The registry of reward kinds: a spec's `type` → its pydantic model and its evaluator.

To add a kind (e.g. a grader): subclass `protocol.SpecBase` with `type: Literal["<name>"]`,
write `async def evaluate(spec, items, context) -> Evaluation` (one `ItemScore` per item; a
failure of one item goes in its `error`, with `score=None`), and add one entry to
`REWARD_KINDS`. `normalize` and `clip` then apply to it as to every kind, and a kind that nests
specs (a mixture) parses its children with `parse_reward_spec` and evaluates them through
`REWARD_KINDS` again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from reward_service import graded
from reward_service.evaluation import Evaluator
from reward_service.learned import evaluate_ensemble, evaluate_reward_model
from reward_service.protocol import EnsembleSpec, RewardModelSpec, SpecBase
from services.errors import InvalidRequest


@dataclass(frozen=True)
class RewardKind:
    spec: type[SpecBase]
    evaluate: Evaluator


REWARD_KINDS: dict[str, RewardKind] = {
    "reward_model": RewardKind(RewardModelSpec, evaluate_reward_model),
    "ensemble": RewardKind(EnsembleSpec, evaluate_ensemble),
    "string_check": RewardKind(graded.StringCheckSpec, graded.evaluate_grader),
    "text_similarity": RewardKind(graded.TextSimilaritySpec, graded.evaluate_grader),
    "python": RewardKind(graded.PythonSpec, graded.evaluate_grader),
    "score_model": RewardKind(graded.ScoreModelSpec, graded.evaluate_grader),
    "multi": RewardKind(graded.MultiSpec, graded.evaluate_grader),
}


def parse_reward_spec(raw: dict[str, Any], param: str = "reward") -> SpecBase:
    """The spec's model, or InvalidRequest whose `param` is the JSON path of the first problem."""
    kind = raw.get("type")
    if not isinstance(kind, str) or kind not in REWARD_KINDS:
        raise InvalidRequest(f"{param}.type must be one of {sorted(REWARD_KINDS)}, got {kind!r}",
                             param=f"{param}.type")
    try:
        return REWARD_KINDS[kind].spec.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        path = ".".join([param, *(str(p) for p in first["loc"])])
        message = "unknown field" if first["type"] == "extra_forbidden" else first["msg"]
        if first["type"] not in ("missing", "extra_forbidden") and first["loc"]:
            message = f"{message}, got {first.get('input')!r}"
        raise InvalidRequest(f"{path}: {message}", param=path) from None
