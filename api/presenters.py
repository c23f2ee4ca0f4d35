"""ORM rows → response objects."""

from __future__ import annotations

import re
from datetime import datetime

from fastapi import Response

from api import protocol
from api.tensorboard import ScalarPoint, events_file, events_file_name
from services.db.models import (
    ApiKey,
    Checkpoint,
    File,
    Job,
    JobEvent,
    JobMetric,
    Project,
    RegisteredModel,
)
from services.errors import InvalidRequest

EVENT_PREFIX = "ftevent-"
EVENT_CURSOR = re.compile(r"ftevent-[0-9]{1,18}")
"""An event id as a cursor: ASCII digits only, and few enough to fit PostgreSQL's bigint."""


def ts(moment: datetime | None) -> int | None:
    return int(moment.timestamp()) if moment else None


def file_object(row: File) -> protocol.FileObject:
    return protocol.FileObject(id=row.id, bytes=row.bytes, created_at=ts(row.created_at) or 0,
                               filename=row.filename, purpose=row.purpose,
                               line_count=row.line_count, sha256=row.sha256,
                               shapes=row.shapes)


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
        attempts=job.attempts, total_steps=job.total_steps,
    )


def event_object(event: JobEvent) -> protocol.JobEventObject:
    return protocol.JobEventObject(id=f"{EVENT_PREFIX}{event.id}", created_at=ts(event.created_at)
                                   or 0, level=event.level, message=event.message,
                                   data=event.data, type=event.type)


def parse_event_cursor(after: str | None) -> int | None:
    if after is None:
        return None
    if not EVENT_CURSOR.fullmatch(after):
        raise InvalidRequest(f"after must be an event id like {EVENT_PREFIX}42, got {after!r}",
                             param="after")
    return int(after.removeprefix(EVENT_PREFIX))


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


def base_model_object(row: RegisteredModel) -> protocol.BaseModelObject:
    """A base model as the admin API shows it: where it loads from and what its checkpoint
    said when it was declared."""
    metadata = row.metadata_ or {}
    facts = metadata.get("checkpoint")
    return protocol.BaseModelObject(
        **model_object(row, row.id).model_dump(), path=row.path,
        hub_id=(metadata.get("source") or {}).get("hub_id"),
        trust_remote_code=bool(metadata.get("trust_remote_code")),
        checkpoint=protocol.CheckpointFacts.model_validate(facts) if facts else None)


def project_object(row: Project) -> protocol.ProjectObject:
    return protocol.ProjectObject(id=row.id, name=row.name, created_at=ts(row.created_at) or 0)


def key_object(row: ApiKey, secret: str | None = None) -> protocol.ApiKeyObject:
    return protocol.ApiKeyObject(id=row.id, name=row.name, project_id=row.project_id,
                                 prefix=row.prefix, created_at=ts(row.created_at) or 0,
                                 scopes=list(row.scopes or []), key=secret)


def tensorboard_response(job: Job, rows: list[JobMetric]) -> Response:
    """A job's metric rows as one TensorBoard event file, sent as a download."""
    created = job.created_at.timestamp()
    points = [ScalarPoint(tag=row.name, step=row.step, value=row.value,
                          wall_time=row.created_at.timestamp()) for row in rows]
    points.sort(key=lambda point: (point.step, point.tag))  # as a writer would have written them
    name = events_file_name(job.id, created)
    return Response(events_file(points, created), media_type="application/octet-stream",
                    headers={"Content-Disposition": f'attachment; filename="{name}"'})
