"""/v1/fine_tuning/jobs: OpenAI's fine-tuning job API, extended with metrics (JSON, or a
TensorBoard event file)."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Response

from api.deps import JobsDep
from api.presenters import (
    EVENT_CURSOR,
    checkpoint_object,
    event_object,
    job_object,
    parse_event_cursor,
    tensorboard_response,
)
from api.protocol import (
    CheckpointObject,
    FineTuningJob,
    JobCreate,
    JobEventObject,
    ListObject,
    MetricSeries,
)
from services.job_states import JobStatus
from services.web import ERROR_RESPONSES

router = APIRouter(prefix="/v1/fine_tuning/jobs", tags=["fine-tuning"], responses=ERROR_RESPONSES)
Limit = Annotated[int, Query(ge=1, le=1000)]
MAX_STEP = 2**31 - 1
"""Steps are stored as PostgreSQL integers; a larger `after_step` is refused, not sent."""

EventCursor = Annotated[str | None, Query(
    description="the id of the last event seen (ftevent-N)",
    json_schema_extra={"pattern": f"^{EVENT_CURSOR.pattern}$"})]
"""Declared for clients and checked by `parse_event_cursor`, whose error names the form."""


@router.post("", response_model=FineTuningJob)
def create_job(body: JobCreate, jobs: JobsDep) -> FineTuningJob:
    return job_object(jobs.create(body))


@router.get("", response_model=ListObject[FineTuningJob])
def list_jobs(jobs: JobsDep, limit: Limit = 20, after: str | None = None,
              status: JobStatus | None = None) -> ListObject[FineTuningJob]:
    rows, has_more = jobs.page(limit, after, status.value if status else None)
    return ListObject[FineTuningJob](data=[job_object(j) for j in rows], has_more=has_more)


@router.get("/{job_id}", response_model=FineTuningJob)
def retrieve_job(job_id: str, jobs: JobsDep) -> FineTuningJob:
    return job_object(jobs.get(job_id))


@router.post("/{job_id}/cancel", response_model=FineTuningJob)
def cancel_job(job_id: str, jobs: JobsDep) -> FineTuningJob:
    return job_object(jobs.cancel(job_id))


@router.get("/{job_id}/events", response_model=ListObject[JobEventObject])
def list_events(job_id: str, jobs: JobsDep, limit: Limit = 20, after: EventCursor = None,
                order: Literal["asc", "desc"] = "desc") -> ListObject[JobEventObject]:
    """Newest first as in OpenAI's API; `order=asc` with `after` follows a job as it runs."""
    rows, has_more = jobs.events(job_id, limit, parse_event_cursor(after), order == "asc")
    return ListObject[JobEventObject](data=[event_object(e) for e in rows], has_more=has_more)


@router.get("/{job_id}/checkpoints", response_model=ListObject[CheckpointObject])
def list_checkpoints(job_id: str, jobs: JobsDep, limit: Limit = 10) -> ListObject[CheckpointObject]:
    rows = jobs.checkpoints(job_id, limit)
    return ListObject[CheckpointObject](data=[checkpoint_object(c) for c in rows])


TENSORBOARD_FILE = {"application/octet-stream": {"schema": {"type": "string",
                                                           "format": "binary"}}}
MetricsFormat = Annotated[Literal["json", "tensorboard"], Query(
    alias="format", description="json: the series; tensorboard: a TensorBoard event file")]


@router.get("/{job_id}/metrics", response_model=ListObject[MetricSeries], responses={
    200: {"description": "The metric series (JSON), or with `format=tensorboard` a "
                         "TensorBoard event file to put in a run's folder",
          "content": TENSORBOARD_FILE}})
def job_metrics(job_id: str, jobs: JobsDep, name: Annotated[list[str] | None, Query()] = None,
                after_step: Annotated[int | None, Query(ge=0, le=MAX_STEP)] = None,
                export: MetricsFormat = "json") -> ListObject[MetricSeries] | Response:
    """Each metric as a series over optimizer steps, e.g. train_loss, valid_loss; with
    `format=tensorboard`, the same as a TensorBoard event file (`tensorboard --logdir` on a
    folder that holds it shows each metric as a scalar)."""
    if export == "tensorboard":
        return tensorboard_response(jobs.get(job_id), jobs.metric_rows(job_id, name, after_step))
    series = jobs.metrics(job_id, name, after_step)
    data = [MetricSeries(name=n, steps=[s for s, _ in points], values=[v for _, v in points])
            for n, points in series.items()]
    return ListObject[MetricSeries](data=data)
