"""`Scorer`: a score request → its spec's evaluator → normalisation and clipping → response."""

from __future__ import annotations

import time
from dataclasses import replace

from reward_service.evaluation import ItemScore, ScoringContext
from reward_service.kinds import REWARD_KINDS, parse_reward_spec
from reward_service.metrics import RewardMetrics
from reward_service.normalize import RunningNormalizer, clip
from reward_service.protocol import ScoreRequest, ScoreResponse, ScoreResult, SpecBase, Usage


class Scorer:
    def __init__(self, context: ScoringContext, normalizer: RunningNormalizer,
                 metrics: RewardMetrics):
        self.context = context
        self.normalizer = normalizer
        self.metrics = metrics

    async def score(self, request: ScoreRequest, project_id: str | None = None) -> ScoreResponse:
        """Score ``request`` with the reward models ``project_id`` may use (None: any)."""
        started = time.perf_counter()
        spec = parse_reward_spec(request.reward)
        context = replace(self.context, project_id=project_id)
        try:
            evaluation = await REWARD_KINDS[spec.type].evaluate(spec, request.items, context)
        except Exception:
            self.metrics.requests.labels(spec.type, "error").inc()
            raise
        scores = self.post_process(spec, evaluation.results, project_id)
        elapsed = time.perf_counter() - started
        self.metrics.requests.labels(spec.type, "ok").inc()
        self.metrics.items.labels(spec.type).inc(len(request.items))
        self.metrics.request_seconds.observe(elapsed)
        data = [ScoreResult(index=i, score=score, parts=result.parts, error=result.error,
                            truncated=result.truncated)
                for i, (score, result) in enumerate(zip(scores, evaluation.results, strict=True))]
        return ScoreResponse(data=data, usage=Usage(tokens=evaluation.tokens,
                                                    ms=round(elapsed * 1000, 3)))

    def post_process(self, spec: SpecBase, results: list[ItemScore],
                     project_id: str | None) -> list[float | None]:
        """Running normalisation (of the items that have a score) with ``project_id``'s own
        statistics, then clipping."""
        scores = [result.score for result in results]
        if spec.normalize is not None:
            scored = {i: score for i, score in enumerate(scores) if score is not None}
            normalized = self.normalizer.normalize((project_id, spec.statistics_key()),
                                                   list(scored.values()), spec.normalize.epsilon)
            for i, value in zip(scored, normalized, strict=True):
                scores[i] = value
        return [None if score is None else clip(score, spec.clip) for score in scores]
