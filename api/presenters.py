"""ORM rows → response objects."""

from __future__ import annotations

from datetime import datetime

from api import protocol
from services.db.models import ApiKey, Checkpoint, File, Job, JobEvent, Project, RegisteredModel
from services.errors import InvalidRequest

EVENT_PREFIX = "ftevent-"


def ts(moment: datetime | None) -> int | None:
    return int(moment.timestamp()) if moment else None


def file_object(row: File) -> protocol.FileObject:
    return protocol.FileObject(id=row.id, bytes=row.bytes, created_at=ts(row.created_at) or 0,
                               filename=row.filename, purpose=row.purpose,
                               line_count=row.line_count, sha256=row.sha256)


def job_object(job: Job) -> protocol.FineTuningJob:
    method_type = job.method["type"]
    hyperparameters = (job.method.get(method_type) or {}).get("hyperparameters", {})
    return protocol.FineTuningJob(
        id=job.id, created_at=ts(job.created_at) or 0,
        error=protocol.JobError(**job.error) if job.error else None,
        fine_tuned_model=job.fine_tuned_model, finished_at=ts(job.finished_at),
        hyperparameters=hyperparameters, model=job.model, organization_id=job.project_id,
        seed=job.seed, status=job.status, trained_tokens=job.trained_tokens,
        training_file=job.training_file, validation_file=job.validation_file,
        metadata=job.metadata_, method=job.method, suffix=job.suffix,
        user_provided_suffix=job.suffix, cancel_requested=job.cancel_requested,
        attempts=job.attempts,
    )


def event_object(event: JobEvent) -> protocol.JobEventObject:
    return protocol.JobEventObject(id=f"{EVENT_PREFIX}{event.id}", created_at=ts(event.created_at)
                                   or 0, level=event.level, message=event.message,
                                   data=event.data, type=event.type)


def parse_event_cursor(after: str | None) -> int | None:
    if after is None:
        return None
    digits = after.removeprefix(EVENT_PREFIX)
    if not digits.isdigit():
        raise InvalidRequest(f"after must be an event id like {EVENT_PREFIX}42, got {after!r}",
                             param="after")
    return int(digits)


def checkpoint_object(row: Checkpoint) -> protocol.CheckpointObject:
    return protocol.CheckpointObject(
        id=row.id, created_at=ts(row.created_at) or 0,
        fine_tuned_model_checkpoint=f"{row.job_id}:ckpt-step-{row.step}",
        fine_tuning_job_id=row.job_id, metrics=row.metrics, step_number=row.step)


def model_object(row: RegisteredModel, root: str) -> protocol.ModelObject:
    """``root``: the base model at the root of the row's lineage (`registry.root_of`)."""
    return protocol.ModelObject(id=row.id, created=ts(row.created_at) or 0,
                                owned_by=row.project_id or "alignd", kind=row.kind,
                                base_model=root if row.base_model else None,
                                parent=row.base_model, job_id=row.job_id)


def project_object(row: Project) -> protocol.ProjectObject:
    return protocol.ProjectObject(id=row.id, name=row.name, created_at=ts(row.created_at) or 0)


def key_object(row: ApiKey, secret: str | None = None) -> protocol.ApiKeyObject:
    return protocol.ApiKeyObject(id=row.id, name=row.name, project_id=row.project_id,
                                 prefix=row.prefix, created_at=ts(row.created_at) or 0,
                                 scopes=list(row.scopes or []), key=secret)
