"""Graders as reward kinds: `string_check`, `text_similarity`, `python`, `score_model` and
`multi` (OpenAI's shapes, from `reward_service.graders`) scored through `/v1/score`.

Each kind's spec is the grader's own model plus the post-processing every kind shares
(`normalize`, `clip`). Grading runs in a worker thread (the python grader waits on its
sandbox process); a `score_model` grader's judge is a registered reward model, scored through
the same cache and micro-batcher as the `reward_model` kind."""

from __future__ import annotations

import asyncio
from typing import Any

from reward_service.aggregate import weighted_sum
from reward_service.evaluation import Evaluation, ItemScore, ScoringContext
from reward_service.graders import (
    MultiGrader,
    PythonGrader,
    ScoreModelFn,
    ScoreModelGrader,
    StringCheckGrader,
    TextSimilarityGrader,
    grade_batch,
)
from reward_service.learned import model_outputs
from reward_service.protocol import ScoreItem, SpecBase


class StringCheckSpec(StringCheckGrader, SpecBase):  # type: ignore[misc]  # Literal type narrows str
    pass


class TextSimilaritySpec(TextSimilarityGrader, SpecBase):  # type: ignore[misc]  # Literal type narrows str
    pass


class PythonSpec(PythonGrader, SpecBase):  # type: ignore[misc]  # Literal type narrows str
    pass


class ScoreModelSpec(ScoreModelGrader, SpecBase):  # type: ignore[misc]  # Literal type narrows str
    pass


class MultiSpec(MultiGrader, SpecBase):  # type: ignore[misc]  # Literal type narrows str
    pass


def _prompt_text(item: ScoreItem) -> str:
    if item.messages is None:
        return str(item.prompt)
    return "\n".join(message.content for message in item.messages[:-1])


def _row(item: ScoreItem) -> dict[str, Any]:
    """What `{{item.<field>}}` sees: the prompt and the item's extra fields."""
    return {"prompt": _prompt_text(item), **item.item}


def _judge(context: ScoringContext, loop: asyncio.AbstractEventLoop) -> ScoreModelFn:
    """score_model's hook: called from the grading thread, scored on the event loop."""

    async def score(model_id: str, prompts: list[str], responses: list[str]) -> list[float]:
        model = await context.cache.reward_model(model_id, param="reward.model",
                                                 project_id=context.project_id)
        items = [ScoreItem(prompt=p, response=r) for p, r in zip(prompts, responses, strict=True)]
        outputs = await model_outputs(model, items, context)
        return [weighted_sum(row, model.default_weights) for row in outputs.parts]

    def score_model_fn(model_id: str, prompts: list[str], responses: list[str]) -> list[float]:
        return asyncio.run_coroutine_threadsafe(score(model_id, prompts, responses), loop).result()

    return score_model_fn


async def evaluate_grader(spec: Any, items: list[ScoreItem],
                          context: ScoringContext) -> Evaluation:
    samples = [item.response_text for item in items]
    rows = [_row(item) for item in items]
    outcomes = await context.grading.run(
        context.project_id, grade_batch, spec, samples, rows,
        score_model_fn=_judge(context, asyncio.get_running_loop()), limits=context.sandbox_limits)
    return Evaluation(results=[ItemScore(score=o.score, parts=dict(o.parts), error=o.error)
                               for o in outcomes])
