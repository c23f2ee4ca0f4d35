"""What the reward service builds once at start-up and every request reaches through
dependencies."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.orm import Session, sessionmaker

from reward_service.evaluation import ScoringContext
from reward_service.graders import SandboxLimits
from reward_service.grading_pool import GradingPool
from reward_service.metrics import RewardMetrics
from reward_service.model_cache import RewardModelCache
from reward_service.normalize import RunningNormalizer
from reward_service.scorer import Scorer
from services.auth import KeyCache
from services.db.engine import session_factory
from services.db.migrate import ensure_migrated
from services.embedded import resolve_database_url
from services.invalidation import KEY, MODEL, InvalidationListener
from services.rate_limit import RateLimiter
from services.settings import RewardSettings


@dataclass
class RewardState:
    settings: RewardSettings
    database_url: str
    sessions: sessionmaker[Session]
    cache: RewardModelCache
    metrics: RewardMetrics
    scorer: Scorer
    keys: KeyCache
    limiter: RateLimiter
    listener: InvalidationListener | None = None

    @classmethod
    def build(cls, settings: RewardSettings) -> RewardState:
        if settings.torch_threads:
            import torch

            torch.set_num_threads(settings.torch_threads)
        url = resolve_database_url(settings)
        ensure_migrated(url)  # refuse to serve on a schema the code does not match
        sessions = session_factory(url)
        metrics = RewardMetrics()
        cache = RewardModelCache(
            sessions, capacity_bytes=settings.reward_cache_bytes,
            max_input_tokens=settings.max_input_tokens, max_wait_ms=settings.max_wait_ms,
            max_batch_tokens=settings.max_batch_tokens, observe=metrics.observe_batch,
            recheck_seconds=settings.registry_recheck_seconds, observe_cache=metrics.observe_cache)
        # The python grader's sandbox shows nothing of the host but the interpreter.
        limits = SandboxLimits(isolation=settings.python_grader_isolation,
                               request_seconds=settings.python_grader_request_seconds)
        grading = GradingPool(settings.grader_threads, settings.grader_threads_per_project,
                              settings.grader_queue)
        scorer = Scorer(ScoringContext(cache=cache, sandbox_limits=limits, grading=grading),
                        RunningNormalizer(), metrics)
        keys = KeyCache(sessions, ttl=settings.key_cache_seconds)
        listener = InvalidationListener(url, {KEY: keys.forget_key,
                                              MODEL: cache.invalidate}).start()
        return cls(settings=settings, database_url=url, sessions=sessions, cache=cache,
                   metrics=metrics, scorer=scorer, keys=keys,
                   limiter=RateLimiter.for_service(settings, "reward"), listener=listener)
