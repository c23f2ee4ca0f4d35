"""Evaluators of the learned reward kinds: one reward model, and ensembles of them."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from reward_service.aggregate import AGGREGATIONS, check_weights, weighted_sum
from reward_service.encoding import EncodedItem, encode_item
from reward_service.evaluation import Evaluation, ItemScore, ScoringContext
from reward_service.model_cache import LoadedLogProbModel, LoadedModel
from reward_service.protocol import EnsembleSpec, RewardModelSpec, ScoreItem

ENCODE_INLINE_ITEMS = 32
"""Requests with more items than this are tokenized in a worker thread, off the event loop."""


@dataclass
class ModelOutputs:
    parts: list[dict[str, float]]
    """Each item's outputs by objective name."""
    encoded: list[EncodedItem]
    tokens: int
    """Tokens fed to models: an implicit reward model with a reference reads each item twice."""


def _encode_all(model: LoadedModel, items: list[ScoreItem]) -> list[EncodedItem]:
    return [encode_item(model.tokenizer, item, model.max_input_tokens) for item in items]


async def model_outputs(model: LoadedModel, items: list[ScoreItem],
                        context: ScoringContext) -> ModelOutputs:
    """Each item's outputs by objective name, its encoding, and the tokens read."""
    if len(items) > ENCODE_INLINE_ITEMS:
        encoded = await asyncio.to_thread(_encode_all, model, items)
    else:
        encoded = _encode_all(model, items)
    outputs, passes = await _outputs(model, encoded, context)  # (N, K)
    return ModelOutputs(parts=[dict(zip(model.objectives, row, strict=True)) for row in outputs],
                        encoded=encoded, tokens=passes * sum(len(e) for e in encoded))


async def _outputs(model: LoadedModel, encoded: list[EncodedItem], context: ScoringContext
                   ) -> tuple[list[list[float]], int]:
    """(N, K) outputs and the forward passes each item took. An implicit reward model's one
    output is β·(Σ log π(y|x) − Σ log π_ref(y|x)), the reference read through the cache."""
    if not isinstance(model, LoadedLogProbModel) or model.head is None:
        return await model.score(encoded), 1
    beta = model.head.beta
    if model.head.reference is None:
        return [[beta * logp] for (logp,) in await model.score(encoded)], 1
    reference = await context.cache.reference(model.head)
    policy_logps, reference_logps = await asyncio.gather(model.score(encoded),
                                                         reference.score(encoded))
    return [[beta * (logp - ref_logp)] for (logp,), (ref_logp,)
            in zip(policy_logps, reference_logps, strict=True)], 2


def _weights(model: LoadedModel, given: dict[str, float] | None) -> dict[str, float]:
    if given is None:
        return model.default_weights
    check_weights(given, model.objectives, param="reward.objective_weights")
    return given


async def evaluate_reward_model(spec: RewardModelSpec, items: list[ScoreItem],
                                context: ScoringContext) -> Evaluation:
    model = await context.cache.reward_model(spec.model, param="reward.model",
                                             project_id=context.project_id)
    weights = _weights(model, spec.objective_weights)
    outputs = await model_outputs(model, items, context)
    return Evaluation(
        results=[ItemScore(score=weighted_sum(p, weights), parts=p, truncated=e.truncated)
                 for p, e in zip(outputs.parts, outputs.encoded, strict=True)],
        tokens=outputs.tokens)


async def _members(spec: EnsembleSpec, context: ScoringContext
                   ) -> tuple[list[str], list[LoadedModel]]:
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
    outputs = await asyncio.gather(*(model_outputs(member, items, context)
                                     for member in members))
    aggregate = AGGREGATIONS[spec.aggregation]
    results = []
    for index in range(len(items)):
        parts = {name: weighted_sum(member.parts[index], member_weights)
                 for name, member, member_weights in zip(names, outputs, weights, strict=True)}
        results.append(ItemScore(
            score=aggregate(list(parts.values()), spec.uwo_lambda or 0.0), parts=parts,
            truncated=any(member.encoded[index].truncated for member in outputs)))
    return Evaluation(results=results, tokens=sum(member.tokens for member in outputs))
