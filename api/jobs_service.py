"""Fine-tuning jobs: create (validate, persist, enqueue), read, cancel, and their history."""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import literal, select, tuple_
from sqlalchemy.orm import Session

from api.files_service import FileService
from api.model_fit import FileShapes, check_model_fits
from api.protocol import JobCreate
from services.db.models import Checkpoint, Job, JobEvent, JobMetric
from services.errors import Conflict, InvalidRequest, NotFound
from services.ids import new_id
from services.job_signals import notify_cancel
from services.job_states import TERMINAL, UNPUBLISHED, JobStatus, record_event, transition
from services.methods import (
    MethodBase,
    allowed_purposes,
    allowed_shapes,
    describe,
    named_models,
    reward_spec,
)
from services.registry import get_visible_model

Enqueue = Callable[[str], None]
CheckReward = Callable[[dict[str, Any], str, str], bool]
"""(spec, project, param) → whether the reward service could judge it; raises if it refused."""


class JobService:
    def __init__(self, session: Session, project_id: str, files: FileService, enqueue: Enqueue,
                 check_reward: CheckReward | None = None):
        self.session, self.project_id = session, project_id
        self.files, self.enqueue = files, enqueue
        self.check_reward = check_reward

    def create(self, request: JobCreate) -> Job:
        self._check_request(request)
        reward_checked = self._check_reward(request)
        job = Job(
            id=new_id("ftjob"), project_id=self.project_id, model=request.model,
            training_file=request.training_file, validation_file=request.validation_file,
            suffix=request.suffix, seed=request.seed if request.seed is not None
            else random.randrange(2**31), method=request.method.model_dump(mode="json"),
            metadata_=request.metadata, status=JobStatus.VALIDATING_FILES.value,
            enqueued_at=datetime.now(UTC),
        )
        self.session.add(job)
        self.session.flush()
        record_event(self.session, job.id, f"created fine-tuning job {job.id}", type="status",
                     data={"status": job.status})
        if reward_checked is False:
            record_event(self.session, job.id, "the reward service could not be reached to "
                         "check the reward spec; the worker will check it when it scores")
        transition(self.session, job, JobStatus.QUEUED, "files validated; job queued")
        self.session.commit()
        try:
            self.enqueue(job.id)
        except Exception as exc:  # noqa: BLE001 - the broker is down: the job is stored anyway
            # PostgreSQL is the outbox: the workers' sweep publishes it once the broker answers.
            job.enqueued_at = UNPUBLISHED
            record_event(self.session, job.id, f"the job queue could not be reached "
                         f"({type(exc).__name__}: {exc}); the job stays queued and is published "
                         "as soon as the queue is back", level="warning")
            self.session.commit()
        return job

    def _check_request(self, request: JobCreate) -> None:
        if request.hyperparameters:
            raise InvalidRequest("top-level hyperparameters are not supported; put them in "
                                 "method.<type>.hyperparameters", param="hyperparameters")
        base = get_visible_model(self.session, self.project_id, request.model)
        if base.kind == "lora_adapter":
            raise InvalidRequest(f"model {request.model!r} is a LoRA adapter; fine-tune its base "
                                 f"model {base.base_model!r} instead", param="model")
        for model_id, param, kinds in named_models(request.method):
            try:
                named = get_visible_model(self.session, self.project_id, model_id, param=param)
            except NotFound as exc:  # a model the request names: the request is what is wrong
                raise InvalidRequest(exc.message, param=param, code=exc.code) from exc
            if named.kind not in kinds:
                raise InvalidRequest(f"{param.rsplit('.', 1)[-1]} {model_id!r} is a "
                                     f"{named.kind}; it must be a {' or '.join(kinds)}",
                                     param=param, code="wrong_model_kind")
        files: FileShapes = {}
        for param in ("training_file", "validation_file"):
            file_id = getattr(request, param)
            if file_id is not None:
                files[param] = (file_id, self._check_file(request.method, param, file_id))
        check_model_fits(base, request.method, files)

    def _check_file(self, method: MethodBase, param: str, file_id: str) -> list[str]:
        """The file's purpose, then the shapes of its rows, must be ones the method takes."""
        row = self.files.get(file_id, param=param)
        allowed = allowed_purposes(method)
        if row.purpose not in allowed:
            raise InvalidRequest(
                f"{param} {file_id} has purpose {row.purpose!r}; {describe(method)} "
                f"needs one of {', '.join(allowed)}", param=param)
        shapes = allowed_shapes(method)
        found = self.files.shapes(row, param)
        if any(shape not in shapes for shape in found):
            raise InvalidRequest(
                f"{param} {file_id} holds rows of shape {' and '.join(found)}; "
                f"{describe(method)} needs rows of one of the shapes {', '.join(shapes)}",
                param=param, code="wrong_file_shape")
        return found

    def _check_reward(self, request: JobCreate) -> bool | None:
        """None when the method scores nothing, else whether the reward service judged it."""
        found = reward_spec(request.method)
        if found is None or self.check_reward is None:
            return None
        spec, param = found
        return self.check_reward(spec, self.project_id, param)

    def get(self, job_id: str) -> Job:
        job = self.session.get(Job, job_id)
        if job is None or job.project_id != self.project_id:
            raise NotFound(f"fine-tuning job {job_id!r} does not exist", param="job_id",
                           code="job_not_found")
        return job

    def page(self, limit: int, after: str | None, status: str | None) -> tuple[list[Job], bool]:
        query = select(Job).where(Job.project_id == self.project_id)
        if status:
            query = query.where(Job.status == status)
        if after:
            cursor = self.get(after)
            query = query.where(tuple_(Job.created_at, Job.id)
                                 < tuple_(literal(cursor.created_at), literal(cursor.id)))
        rows = list(self.session.scalars(
            query.order_by(Job.created_at.desc(), Job.id.desc()).limit(limit + 1)))
        return rows[:limit], len(rows) > limit

    def cancel(self, job_id: str) -> Job:
        job = self.session.scalar(select(Job).where(Job.id == self.get(job_id).id)
                                  .with_for_update())
        assert job is not None
        if job.status in TERMINAL:
            raise Conflict(f"job {job_id} has already {job.status}; it cannot be cancelled",
                           param="job_id", code="invalid_state")
        if job.status == JobStatus.RUNNING:
            job.cancel_requested = True
            record_event(self.session, job.id, "cancellation requested; stopping at the next step")
            notify_cancel(self.session, job.id)
        else:
            transition(self.session, job, JobStatus.CANCELLED, "job cancelled before it started")
        self.session.commit()
        return job

    def events(self, job_id: str, limit: int, after: int | None,
               ascending: bool) -> tuple[list[JobEvent], bool]:
        self.get(job_id)
        query = select(JobEvent).where(JobEvent.job_id == job_id)
        if after is not None:
            query = query.where(JobEvent.id > after if ascending else JobEvent.id < after)
        order = JobEvent.id.asc() if ascending else JobEvent.id.desc()
        rows = list(self.session.scalars(query.order_by(order).limit(limit + 1)))
        return rows[:limit], len(rows) > limit

    def checkpoints(self, job_id: str, limit: int) -> list[Checkpoint]:
        self.get(job_id)
        query = (select(Checkpoint).where(Checkpoint.job_id == job_id)
                 .order_by(Checkpoint.step.desc()).limit(limit))
        return list(self.session.scalars(query))

    def metric_rows(self, job_id: str, names: list[str] | None,
                    after_step: int | None) -> list[JobMetric]:
        """The job's recorded metric values, by name, then step."""
        self.get(job_id)
        query = select(JobMetric).where(JobMetric.job_id == job_id)
        if names:
            query = query.where(JobMetric.name.in_(names))
        if after_step is not None:
            query = query.where(JobMetric.step > after_step)
        return list(self.session.scalars(query.order_by(JobMetric.name, JobMetric.step)))

    def metrics(self, job_id: str, names: list[str] | None,
                after_step: int | None) -> dict[str, list[tuple[int, float]]]:
        series: dict[str, list[tuple[int, float]]] = {}
        for row in self.metric_rows(job_id, names, after_step):
            series.setdefault(row.name, []).append((row.step, row.value))
        return series
