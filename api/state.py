"""What the api builds once at start-up and every request reaches through dependencies."""

from __future__ import annotations

from dataclasses import dataclass

from celery import Celery
from sqlalchemy.orm import Session, sessionmaker

from services.artifacts import LocalArtifactStore
from services.auth import RateLimiter
from services.celery_app import enqueue_job, make_celery
from services.db.engine import session_factory, session_scope
from services.db.migrate import ensure_migrated
from services.embedded import resolve_database_url
from services.registry import declare_base_models
from services.settings import ApiSettings


@dataclass
class ApiState:
    settings: ApiSettings
    database_url: str
    sessions: sessionmaker[Session]
    store: LocalArtifactStore
    celery: Celery
    limiter: RateLimiter

    @classmethod
    def build(cls, settings: ApiSettings) -> ApiState:
        url = resolve_database_url(settings)
        ensure_migrated(url)  # refuse to serve on a schema the code does not match
        sessions = session_factory(url)
        with session_scope(sessions) as session:
            declare_base_models(session, settings.base_models)
        return cls(settings=settings, database_url=url, sessions=sessions,
                   store=LocalArtifactStore(settings.artifacts_dir), celery=make_celery(settings),
                   limiter=RateLimiter(settings.key_requests_per_minute))

    def enqueue(self, job_id: str) -> None:
        enqueue_job(self.celery, job_id, self.settings.job_queue)
