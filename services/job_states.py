"""The fine-tuning job state machine. Every transition is checked here and written as an
event row in the same transaction as the status change."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy.orm import Session

from services.db.models import Job, JobEvent
from services.errors import Conflict
from services.text import storable, storable_json


class JobStatus(StrEnum):
    VALIDATING_FILES = "validating_files"
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})

UNPUBLISHED = datetime(1970, 1, 1, tzinfo=UTC)
"""`enqueued_at` of a queued job whose message never reached the broker: PostgreSQL is the
outbox, and the workers' sweep (`trainer.lease.sweep_unclaimed`) publishes it first thing."""

ALLOWED: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.VALIDATING_FILES: frozenset({JobStatus.QUEUED, JobStatus.FAILED, JobStatus.CANCELLED}),
    JobStatus.QUEUED: frozenset({JobStatus.RUNNING, JobStatus.FAILED, JobStatus.CANCELLED}),
    JobStatus.RUNNING: frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED}),
    JobStatus.SUCCEEDED: frozenset(),
    JobStatus.FAILED: frozenset(),
    JobStatus.CANCELLED: frozenset(),
}


def can_transition(current: str, new: JobStatus) -> bool:
    return new in ALLOWED[JobStatus(current)]


def record_event(session: Session, job_id: str, message: str, *, level: str = "info",
                 type: str = "message", data: dict[str, Any] | None = None) -> JobEvent:
    """An event row. Its message and data may quote what a model wrote (a grader's error
    about a response): NUL and lone surrogates are escaped (`services.text.storable`)."""
    event = JobEvent(job_id=job_id, message=storable(message), level=level, type=type,
                     data=storable_json(data))
    session.add(event)
    return event


def transition(session: Session, job: Job, new: JobStatus, message: str,
               data: dict[str, Any] | None = None) -> JobEvent:
    """Move `job` to `new` and record it; Conflict if the machine does not allow it."""
    if not can_transition(job.status, new):
        raise Conflict(
            f"job {job.id} is {job.status}; it cannot become {new.value}", code="invalid_state"
        )
    now = datetime.now(UTC)
    job.status = new.value
    if new is JobStatus.RUNNING and job.started_at is None:
        job.started_at = now
    if new in TERMINAL:
        job.finished_at = now
        job.lease_owner = None
        job.lease_expires_at = None
    level = "error" if new is JobStatus.FAILED else "info"
    return record_event(session, job.id, message, level=level, type="status",
                        data={"status": new.value, **(data or {})})
