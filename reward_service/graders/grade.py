"""grade_batch: score responses with a grader spec, one GradeOutcome per item.

Each grader type is a function in GRADERS taking the whole batch, so a `python` grader starts
one sandbox per batch and a `score_model` grader calls its model once. A problem with one item
(a missing template field, an exception in user code) becomes that item's error and never
touches the others."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from reward_service.graders.formula import FormulaError
from reward_service.graders.outcome import GradeOutcome
from reward_service.graders.sandbox import SandboxLimits, run_python_grader
from reward_service.graders.similarity import similarity
from reward_service.graders.specs import (
    GraderSpec,
    MultiGrader,
    PythonGrader,
    ScoreModelGrader,
    StringCheckGrader,
    TextSimilarityGrader,
)
from reward_service.graders.templates import TemplateError, render_template
from services.errors import AlignError, InvalidRequest

ScoreModelFn = Callable[[str, list[str], list[str]], list[float]]
"""(model id, prompts, responses) -> one score per pair, from a registered reward model."""
Item = dict[str, Any]
DEFAULT_LIMITS = SandboxLimits()


@dataclass(frozen=True)
class GradeContext:
    """What graders need besides the spec and the batch."""

    score_model_fn: ScoreModelFn | None
    limits: SandboxLimits


Grader = Callable[[Any, list[str], list[Item], GradeContext], list[GradeOutcome]]


def grade_batch(
    spec: GraderSpec,
    samples: list[str],
    items: list[Item],
    *,
    score_model_fn: ScoreModelFn | None = None,
    limits: SandboxLimits = DEFAULT_LIMITS,
) -> list[GradeOutcome]:
    """Grade response `samples[i]` against prompt row `items[i]`, for every i.

    An AlignError raised by `score_model_fn` (say NotFound for an unregistered model) is
    the caller's own and propagates; everything else becomes per-item errors."""
    if len(samples) != len(items):
        raise InvalidRequest(
            f"samples and items must have the same length, got {len(samples)} and {len(items)}"
        )
    return GRADERS[spec.type](spec, samples, items, GradeContext(score_model_fn, limits))


def _per_item(score: Callable[[Any, dict[str, str], Item], float]) -> Grader:
    """A batch grader from a pure per-item scoring function."""

    def grader(
        spec: Any, samples: list[str], items: list[Item], _: GradeContext
    ) -> list[GradeOutcome]:
        outcomes = []
        for sample, item in zip(samples, items):
            try:
                outcomes.append(GradeOutcome(score=score(spec, {"output_text": sample}, item)))
            except TemplateError as exc:
                outcomes.append(GradeOutcome.failed(exc.message))
            except Exception as exc:  # noqa: BLE001 - one item's failure stays that item's
                outcomes.append(GradeOutcome.failed(f"{type(exc).__name__}: {exc}"))
        return outcomes

    return grader


_STRING_OPERATIONS: dict[str, Callable[[str, str], bool]] = {
    "eq": lambda output, reference: output == reference,
    "ne": lambda output, reference: output != reference,
    "like": lambda output, reference: reference in output,
    "ilike": lambda output, reference: reference.casefold() in output.casefold(),
}


def _string_check(spec: StringCheckGrader, sample: dict[str, str], item: Item) -> float:
    output = render_template(spec.input, sample, item)
    reference = render_template(spec.reference, sample, item)
    return 1.0 if _STRING_OPERATIONS[spec.operation](output, reference) else 0.0


def _text_similarity(spec: TextSimilarityGrader, sample: dict[str, str], item: Item) -> float:
    output = render_template(spec.input, sample, item)
    reference = render_template(spec.reference, sample, item)
    return similarity(spec.evaluation_metric, output, reference)


def _python(
    spec: PythonGrader, samples: list[str], items: list[Item], context: GradeContext
) -> list[GradeOutcome]:
    return run_python_grader(spec.source, samples, items, context.limits)


def _score_model(
    spec: ScoreModelGrader, samples: list[str], items: list[Item], context: GradeContext
) -> list[GradeOutcome]:
    outcomes: list[GradeOutcome | None] = [None] * len(items)
    prompts: dict[int, tuple[str, str]] = {}
    for index, (sample, item) in enumerate(zip(samples, items)):
        try:
            prompt = render_template("{{item.prompt}}", {}, item)
            prompts[index] = (prompt, render_template(spec.input, {"output_text": sample}, item))
        except TemplateError as exc:
            outcomes[index] = GradeOutcome.failed(exc.message)
    for index, score in zip(prompts, _call_score_model(spec, list(prompts.values()), context)):
        outcomes[index] = score
    return [outcome or GradeOutcome.failed("not graded") for outcome in outcomes]


def _call_score_model(
    spec: ScoreModelGrader, pairs: list[tuple[str, str]], context: GradeContext
) -> list[GradeOutcome]:
    if not pairs:
        return []
    if context.score_model_fn is None:
        return [GradeOutcome.failed("score_model graders are not available here")] * len(pairs)
    try:
        scores = context.score_model_fn(spec.model, [p for p, _ in pairs], [r for _, r in pairs])
    except AlignError:
        raise
    except Exception as exc:  # noqa: BLE001 - a scorer failure fails its items, not the call
        failure = f"score model {spec.model!r} failed: {type(exc).__name__}: {exc}"
        return [GradeOutcome.failed(failure)] * len(pairs)
    if len(scores) != len(pairs):
        failure = f"score model {spec.model!r} returned {len(scores)} scores for {len(pairs)} items"
        return [GradeOutcome.failed(failure)] * len(pairs)
    low, high = spec.range or (float("-inf"), float("inf"))
    return [GradeOutcome(score=min(max(float(score), low), high)) for score in scores]


def _multi(
    spec: MultiGrader, samples: list[str], items: list[Item], context: GradeContext
) -> list[GradeOutcome]:
    by_grader = {
        name: GRADERS[sub.type](sub, samples, items, context) for name, sub in spec.graders.items()
    }
    outcomes = []
    for index in range(len(items)):
        parts = {name: score for name, o in by_grader.items()
                 if (score := o[index].score) is not None}
        failed = [f"grader {name!r}: {o[index].error}" for name, o in by_grader.items()
                  if o[index].error is not None]
        if failed:
            outcomes.append(GradeOutcome.failed("; ".join(failed), parts))
            continue
        try:
            outcomes.append(GradeOutcome(score=spec.formula.evaluate(parts), parts=parts))
        except FormulaError as exc:
            outcomes.append(GradeOutcome.failed(exc.message, parts))
    return outcomes


GRADERS: dict[str, Grader] = {
    "string_check": _per_item(_string_check),
    "text_similarity": _per_item(_text_similarity),
    "python": _python,
    "score_model": _score_model,
    "multi": _multi,
}
