"""Evaluators of the learned reward kinds: one reward model, and ensembles of them."""

from __future__ import annotations

import asyncio

from reward_service.aggregate import AGGREGATIONS, check_weights, weighted_sum
from reward_service.encoding import EncodedItem, encode_item
from reward_service.evaluation import Evaluation, ItemScore, ScoringContext
from reward_service.model_cache import LoadedRewardModel
from reward_service.protocol import EnsembleSpec, RewardModelSpec, ScoreItem

ENCODE_INLINE_ITEMS = 32
"""Requests with more items than this are tokenized in a worker thread, off the event loop."""


def _encode_all(model: LoadedRewardModel, items: list[ScoreItem]) -> list[EncodedItem]:
    return [encode_item(model.tokenizer, item, model.max_input_tokens) for item in items]


async def model_outputs(model: LoadedRewardModel, items: list[ScoreItem]
                        ) -> tuple[list[dict[str, float]], list[EncodedItem]]:
    """Each item's outputs by objective name, and its encoding."""
    if len(items) > ENCODE_INLINE_ITEMS:
        encoded = await asyncio.to_thread(_encode_all, model, items)
    else:
        encoded = _encode_all(model, items)
    outputs = await model.score([e.input_ids for e in encoded])  # (N, K)
    return [dict(zip(model.objectives, row, strict=True)) for row in outputs], encoded


def _weights(model: LoadedRewardModel, given: dict[str, float] | None) -> dict[str, float]:
    if given is None:
        return model.default_weights
    check_weights(given, model.objectives, param="reward.objective_weights")
    return given


async def evaluate_reward_model(spec: RewardModelSpec, items: list[ScoreItem],
                                context: ScoringContext) -> Evaluation:
    model = await context.cache.reward_model(spec.model, param="reward.model",
                                             project_id=context.project_id)
    weights = _weights(model, spec.objective_weights)
    parts, encoded = await model_outputs(model, items)
    return Evaluation(
        results=[ItemScore(score=weighted_sum(p, weights), parts=p, truncated=e.truncated)
                 for p, e in zip(parts, encoded, strict=True)],
        tokens=sum(len(e.input_ids) for e in encoded))


async def _members(spec: EnsembleSpec, context: ScoringContext
                   ) -> tuple[list[str], list[LoadedRewardModel]]:
    if spec.models is not None:
        members = [await context.cache.reward_model(model_id, param=f"reward.models.{i}",
                                                    project_id=context.project_id)
                   for i, model_id in enumerate(spec.models)]
        return list(spec.models), members
    assert spec.model is not None
    members = await context.cache.ensemble(spec.model, param="reward.model",
                                           project_id=context.project_id)
    return [f"member-{i}" for i in range(len(members))], members


async def evaluate_ensemble(spec: EnsembleSpec, items: list[ScoreItem],
                            context: ScoringContext) -> Evaluation:
    names, members = await _members(spec, context)
    weights = [_weights(member, spec.objective_weights) for member in members]
    outputs = await asyncio.gather(*(model_outputs(member, items) for member in members))
    aggregate = AGGREGATIONS[spec.aggregation]
    results = []
    for index in range(len(items)):
        parts = {name: weighted_sum(member_parts[index], member_weights)
                 for name, (member_parts, _), member_weights in zip(names, outputs, weights,
                                                                     strict=True)}
        results.append(ItemScore(
            score=aggregate(list(parts.values()), spec.uwo_lambda or 0.0), parts=parts,
            truncated=any(encoded[index].truncated for _, encoded in outputs)))
    return Evaluation(results=results, tokens=sum(len(e.input_ids) for _, encoded in outputs
                                                  for e in encoded))
