"""What the api builds once at start-up and every request reaches through dependencies."""

from __future__ import annotations

from dataclasses import dataclass

from celery import Celery
from sqlalchemy.orm import Session, sessionmaker

from api.base_models_service import declare_configured
from api.metrics import ApiMetrics
from services.artifacts import LocalArtifactStore
from services.celery_app import enqueue_job, enqueue_merged_export, make_celery
from services.db.engine import session_factory
from services.db.migrate import ensure_migrated
from services.embedded import resolve_database_url
from services.rate_limit import RateLimiter
from services.settings import ApiSettings


@dataclass
class ApiState:
    settings: ApiSettings
    database_url: str
    sessions: sessionmaker[Session]
    store: LocalArtifactStore
    celery: Celery
    limiter: RateLimiter
    metrics: ApiMetrics

    @classmethod
    def build(cls, settings: ApiSettings) -> ApiState:
        url = resolve_database_url(settings)
        ensure_migrated(url)  # refuse to serve on a schema the code does not match
        sessions = session_factory(url)
        store = LocalArtifactStore(settings.artifacts_dir)
        declare_configured(sessions, store, settings.base_models, settings.allow_remote_code)
        celery = make_celery(settings)
        return cls(settings=settings, database_url=url, sessions=sessions,
                   store=store, celery=celery,
                   limiter=RateLimiter.for_service(settings, "api"),
                   metrics=ApiMetrics.reading(sessions, celery, settings.metrics_collect_seconds))

    def enqueue(self, job_id: str) -> None:
        enqueue_job(self.celery, job_id, self.settings.job_queue)

    def enqueue_export(self, model_id: str) -> None:
        """Ask a worker (of the jobs' queue) to merge a LoRA adapter into its base model."""
        enqueue_merged_export(self.celery, model_id, self.settings.job_queue)
