"""What the inference service builds once at start-up and every request reaches through
dependencies: the catalog, the engine, the generator, the reward client and the metrics."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.orm import Session, sessionmaker

from inference.catalog import ModelCatalog
from inference.engines.base import Engine
from inference.metrics import InferenceMetrics
from inference.serving import Generator
from services.auth import KeyCache
from services.db.engine import session_factory
from services.db.migrate import ensure_migrated
from services.embedded import resolve_database_url
from services.invalidation import KEY, MODEL, InvalidationListener
from services.rate_limit import RateLimiter
from services.reward_client import RewardClient
from services.settings import InferenceSettings


def build_engine(settings: InferenceSettings, catalog: ModelCatalog,
                 metrics: InferenceMetrics) -> Engine:
    import torch

    if settings.engine == "vllm":
        from inference.engines.vllm_engine import VllmEngine

        return VllmEngine(catalog, gpu_memory_utilization=settings.vllm_gpu_memory_utilization,
                          kv_cache_gib=settings.vllm_kv_cache_gib, dtype=settings.dtype,
                          max_loaded_models=settings.vllm_max_loaded_models)
    from inference.engines.torch_engine import TorchEngine

    return TorchEngine(catalog, max_batch_size=settings.max_batch_size,
                       cache_bytes=settings.model_cache_bytes,
                       dtype=getattr(torch, settings.dtype),
                       step_observer=metrics.batch_size.observe)


@dataclass
class InferenceState:
    settings: InferenceSettings
    database_url: str
    sessions: sessionmaker[Session]
    catalog: ModelCatalog
    engine: Engine
    rewards: RewardClient
    metrics: InferenceMetrics
    generator: Generator
    keys: KeyCache
    limiter: RateLimiter
    listener: InvalidationListener | None = None

    @classmethod
    def build(cls, settings: InferenceSettings, engine: Engine | None = None) -> InferenceState:
        if settings.torch_threads:
            import torch

            torch.set_num_threads(settings.torch_threads)
        url = resolve_database_url(settings)
        ensure_migrated(url)
        sessions = session_factory(url)
        catalog = ModelCatalog(sessions)
        metrics = InferenceMetrics()
        engine = engine or build_engine(settings, catalog, metrics)
        metrics.watch_engine(engine.queue_depth, engine.running)
        rewards = RewardClient(settings.reward_url,
                               service_key=settings.admin_key.get_secret_value())
        keys = KeyCache(sessions, ttl=settings.key_cache_seconds)
        listener = InvalidationListener(url, {KEY: keys.forget_key,
                                              MODEL: catalog.invalidate}).start()
        return cls(settings=settings, database_url=url, sessions=sessions, catalog=catalog,
                   engine=engine, rewards=rewards, metrics=metrics,
                   generator=Generator(catalog, engine, rewards, metrics,
                                       stream_interval=settings.stream_interval,
                                       max_sequences=settings.max_sequences_per_request),
                   keys=keys, limiter=RateLimiter.for_service(settings, "inference"),
                   listener=listener)

    async def close(self) -> None:
        if self.listener is not None:
            self.listener.stop()
        await self.engine.close()
        await self.rewards.aclose()
