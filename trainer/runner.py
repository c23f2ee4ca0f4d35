"""Runs one job: claim its lease, build the method's context from the job row, hand over to
the method, and record the outcome. The Celery task is a thin wrapper around `JobRunner.run`."""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session, sessionmaker

from services.artifacts import LocalArtifactStore
from services.checkpoints import inspect_checkpoint
from services.datasets import read_rows
from services.db.engine import DATABASE_DOWN, session_factory, session_scope, while_database_down
from services.db.models import Checkpoint, File, Job, JobMetric, JobStep
from services.errors import NotFound
from services.ids import new_id
from services.job_signals import CancelListener
from services.job_states import JobStatus, record_event, transition
from services.methods import Method, reward_spec
from services.registry import (
    fine_tuned_id,
    get_visible_model,
    register_model,
    resolve_base_path,
    root_model,
)
from services.text import storable_json
from trainer.context import JobStopped, RolloutEngine, TrainingContext, TrainingResult
from trainer.lease import Claim, Heartbeat, claim
from trainer.metrics import WorkerMetrics

log = logging.getLogger(__name__)
T = TypeVar("T")


class LeaseLost(JobStopped):
    """Another worker owns the job now; this one must stop without touching it."""


class MetricsBuffer:
    """Per-step metrics, written at most every `flush_seconds` and before every checkpoint is
    recorded, so a step's metrics never cost a database commit of their own and nothing up to
    the last checkpoint is lost in a crash (later steps are re-run, and re-written, on resume)."""

    def __init__(self, sessions: sessionmaker[Session], job_id: str, attempt: int = 0,
                 owner: str = "", flush_seconds: float = 1.0,
                 on_step: Callable[[int], None] = lambda step: None):
        self.sessions, self.job_id, self.flush_seconds = sessions, job_id, flush_seconds
        self.attempt, self.owner = attempt, owner
        self.on_step = on_step
        """Told of each new step (not of more metrics at a step already reported)."""
        self.rows: dict[tuple[int, str], float] = {}
        self.steps: list[tuple[int, datetime]] = []
        """(step, when it was reported), for `job_steps`: appended, never merged."""
        self.last_flush = time.monotonic()
        self.last_step = 0

    def add(self, step: int, values: dict[str, float]) -> None:
        if step > self.last_step:
            self.on_step(step)
        self.last_step = step
        self.steps.append((step, datetime.now(UTC)))
        self.rows.update({(step, name): float(value) for name, value in values.items()})
        if time.monotonic() - self.last_flush >= self.flush_seconds:
            self.flush(required=False)

    def flush(self, required: bool = True) -> None:
        """Write what is buffered. Unless `required`, a database that is down only delays
        the write to the next flush: the rows stay buffered and training goes on."""
        self.last_flush = time.monotonic()
        if not self.rows and not self.steps:
            return
        try:
            self._write()
        except DATABASE_DOWN:
            if required:
                raise
            log.warning("job %s: metrics kept for later, PostgreSQL is unavailable", self.job_id)
            return
        self.rows.clear()
        self.steps.clear()

    def _write(self) -> None:
        with session_scope(self.sessions) as session:
            if self.rows:
                rows = [{"job_id": self.job_id, "step": step, "name": name, "value": value}
                        for (step, name), value in self.rows.items()]
                statement = insert(JobMetric).values(rows)
                statement = statement.on_conflict_do_update(
                    index_elements=["job_id", "name", "step"],
                    set_={"value": statement.excluded.value})
                session.execute(statement)
            if self.steps:
                session.execute(insert(JobStep).values([
                    {"job_id": self.job_id, "attempt": self.attempt, "step": step,
                     "owner": self.owner, "reported_at": at} for step, at in self.steps]))


class JobRunner:
    """Every database write of a running job waits out a PostgreSQL outage (a restart, a
    failover) for up to `database_retry_seconds`, training on meanwhile where it can: metrics
    stay buffered, a checkpoint or event waits to be recorded. An outage longer than that
    leaves the job running with a lease that expires, so it resumes from its last recorded
    checkpoint once PostgreSQL is back: never marked failed for it, never run twice at once."""

    def __init__(self, database_url: str, store: LocalArtifactStore, owner: str,
                 lease_seconds: int, heartbeat_seconds: float, reward_url: str | None = None,
                 reward_key: str | None = None, reward_retry_seconds: float = 0.0,
                 rollout_engine: RolloutEngine | None = None,
                 database_retry_seconds: float = 300.0, metrics: WorkerMetrics | None = None):
        self.database_url, self.sessions = database_url, session_factory(database_url)
        self.store, self.owner = store, owner
        self.lease_seconds, self.heartbeat_seconds = lease_seconds, heartbeat_seconds
        self.reward_url, self.reward_key = reward_url, reward_key
        self.reward_retry_seconds = reward_retry_seconds
        self.rollout_engine = rollout_engine or RolloutEngine()
        self.database_retry_seconds = database_retry_seconds
        self.metrics = metrics or WorkerMetrics()

    def _waiting(self, call: Callable[[], T], what: str) -> T:
        return while_database_down(call, self.database_retry_seconds, what)

    def run(self, job_id: str) -> str:
        self.metrics.running.inc()
        outcome = "error"
        try:
            outcome = self._run(job_id)
        except DATABASE_DOWN:
            log.exception("job %s: PostgreSQL stayed unavailable for %.0f s; the job resumes "
                          "from its last checkpoint once its lease expires", job_id,
                          self.database_retry_seconds)
            outcome = "database_unavailable"
        finally:
            self.metrics.running.dec()
            self.metrics.jobs.labels(outcome).inc()
        return outcome

    def _run(self, job_id: str) -> str:
        outcome = self._waiting(
            lambda: claim(self.sessions, job_id, self.owner, self.lease_seconds),
            f"claiming job {job_id}")
        if outcome is Claim.SKIPPED:
            log.info("job %s: nothing to do here (finished, cancelled or leased elsewhere)", job_id)
            return outcome.value
        log.info("job %s: running on %s", job_id, self.owner)
        heartbeat = Heartbeat(self.sessions, job_id, self.owner, self.lease_seconds,
                              self.heartbeat_seconds).start()
        listener = CancelListener(self.database_url, job_id, heartbeat.cancelled).start()
        metrics = MetricsBuffer(self.sessions, job_id, owner=self.owner,
                                on_step=self.metrics.stepped)
        try:
            self._waiting(lambda: self._check_cancel_requested(job_id, heartbeat),
                          f"reading job {job_id}")
            result = self._train(job_id, heartbeat, metrics)
            self._waiting(metrics.flush, f"recording job {job_id}'s metrics")
            self._succeed(job_id, result)
        except LeaseLost:
            log.warning("job %s: lease lost; leaving it to its new worker", job_id)
            return "lease_lost"
        except JobStopped:
            self._waiting(metrics.flush, f"recording job {job_id}'s metrics")
            self._finish(job_id, JobStatus.CANCELLED,
                         f"job cancelled after step {metrics.last_step}")
            return JobStatus.CANCELLED.value
        except DATABASE_DOWN:
            raise
        except Exception as exc:
            log.exception("job %s failed", job_id)
            self._fail(job_id, exc)
            return JobStatus.FAILED.value
        finally:
            listener.stop()
            heartbeat.stop()
        return JobStatus.SUCCEEDED.value

    def _train(self, job_id: str, heartbeat: Heartbeat, metrics: MetricsBuffer) -> TrainingResult:
        from trainer.methods import METHODS  # torch is imported only when a job runs

        method_type, ctx = self._waiting(lambda: self._context(job_id, heartbeat, metrics),
                                         f"reading job {job_id}")
        return METHODS[method_type](ctx)  # the method logs where it resumed from

    def _rows(self, session: Session, file_id: str | None) -> list[dict[str, Any]] | None:
        if file_id is None:
            return None
        row = session.get(File, file_id)
        if row is None:
            raise ValueError(f"file {file_id} no longer exists")
        return list(read_rows(self.store.iter_lines(row.sha256)))

    def _context(self, job_id: str, heartbeat: Heartbeat,
                 metrics: MetricsBuffer) -> tuple[str, TrainingContext]:
        """The job's method type, and the context its method runs with."""
        from trainer.checkpoint import latest_checkpoint

        with session_scope(self.sessions) as session:
            job = session.get(Job, job_id)
            assert job is not None
            base_path, _ = resolve_base_path(session, job.model)
            training, validation = (self._rows(session, job.training_file),
                                    self._rows(session, job.validation_file))
            method = Method.model_validate(job.method)
            reward = reward_spec(method)
            model_id, project_id = job.model, job.project_id
            metrics.attempt = job.attempts  # the claim counted this attempt
        checkpoint_root = self.store.directory("checkpoints", job_id)
        hyperparameters, cut = fit_to_context(method.hyperparameters, Path(base_path))
        if cut:
            self._event(job_id, cut)
        return method.type, TrainingContext(
            job_id=job_id, base_model_path=Path(base_path), training_rows=training or [],
            validation_rows=validation, hyperparameters=hyperparameters, seed=job.seed,
            output_dir=self.store.directory("models", job_id), checkpoint_root=checkpoint_root,
            resume_from=latest_checkpoint(checkpoint_root),
            report_metrics=metrics.add,
            on_checkpoint=lambda step, path, values: self._checkpoint(job_id, step, path, values,
                                                                      metrics),
            log=lambda message: self._event(job_id, message),
            report_total_steps=lambda steps: self._total_steps(job_id, steps),
            check_continue=lambda: self._check_continue(job_id, heartbeat),
            base_model=model_id, reward_url=self.reward_url, reward_key=self.reward_key,
            project_id=project_id, reward=reward[0] if reward else None,
            reward_retry_seconds=self.reward_retry_seconds, rollout_engine=self.rollout_engine,
            resolve_model=lambda model_id: self._model_path(project_id, model_id),
        )

    def _model_path(self, project_id: str, model_id: str) -> Path:
        def read() -> Path:
            with session_scope(self.sessions) as session:
                try:
                    return Path(get_visible_model(session, project_id, model_id).path)
                except NotFound as exc:
                    raise ValueError(exc.message) from exc

        return self._waiting(read, f"resolving model {model_id}")

    def _check_cancel_requested(self, job_id: str, heartbeat: Heartbeat) -> None:
        """Once, after the listener is up: a cancellation notified before then is in the row."""
        with session_scope(self.sessions) as session:
            if session.scalar(select(Job.cancel_requested).where(Job.id == job_id)):
                heartbeat.cancelled.set()

    @staticmethod
    def _check_continue(job_id: str, heartbeat: Heartbeat) -> None:
        """Called every optimizer step: flags only, no database round trip."""
        if heartbeat.lost.is_set():
            raise LeaseLost(job_id)
        if heartbeat.cancelled.is_set():
            raise JobStopped("cancelled")

    def _checkpoint(self, job_id: str, step: int, path: Path, values: dict[str, float],
                    metrics: MetricsBuffer) -> None:
        self._waiting(lambda: self._record_checkpoint(job_id, step, path, values, metrics),
                      f"recording job {job_id}'s checkpoint at step {step}")

    def _record_checkpoint(self, job_id: str, step: int, path: Path, values: dict[str, float],
                           metrics: MetricsBuffer) -> None:
        metrics.flush()
        statement = insert(Checkpoint).values(
            id=new_id("ftckpt"), job_id=job_id, step=step, path=str(path), metrics=values
        ).on_conflict_do_nothing(index_elements=["job_id", "step"])
        with session_scope(self.sessions) as session:
            session.execute(statement)
            # The method keeps only its newest checkpoints on disk; list only what still exists.
            for row in session.scalars(select(Checkpoint).where(Checkpoint.job_id == job_id)):
                if not Path(row.path).exists():
                    session.delete(row)
            record_event(session, job_id, f"checkpoint saved at step {step}", type="checkpoint",
                         data={"step": step, **values})

    def _total_steps(self, job_id: str, steps: int) -> None:
        def write() -> None:
            with session_scope(self.sessions) as session:
                session.execute(update(Job).where(Job.id == job_id).values(total_steps=steps))

        self._waiting(write, f"recording job {job_id}'s step count")

    def _event(self, job_id: str, message: str) -> None:
        def write() -> None:
            with session_scope(self.sessions) as session:
                record_event(session, job_id, message)

        self._waiting(write, f"recording an event of job {job_id}")

    def _locked_job(self, session: Session, job_id: str) -> Job | None:
        job = session.scalar(select(Job).where(Job.id == job_id).with_for_update())
        return job if job is not None and job.lease_owner == self.owner else None

    def _succeed(self, job_id: str, result: TrainingResult) -> None:
        self._waiting(lambda: self._record_success(job_id, result),
                      f"recording job {job_id}'s success")

    def _record_success(self, job_id: str, result: TrainingResult) -> None:
        with session_scope(self.sessions) as session:
            job = self._locked_job(session, job_id)
            if job is None:
                raise LeaseLost(job_id)
            model_id = fine_tuned_id(root_model(session, job.model), job.suffix, job.id)
            register_model(session, model_id=model_id, project_id=job.project_id,
                           kind=result.kind, path=str(result.output_dir), base_model=job.model,
                           job_id=job.id, metadata={**result.metadata,
                                                   "final_metrics": result.final_metrics})
            job.fine_tuned_model, job.trained_tokens = model_id, result.trained_tokens
            transition(session, job, JobStatus.SUCCEEDED, f"job succeeded; model {model_id}",
                       data={"fine_tuned_model": model_id, **result.final_metrics})

    def _finish(self, job_id: str, status: JobStatus, message: str,
                error: dict[str, Any] | None = None) -> None:
        def write() -> None:
            with session_scope(self.sessions) as session:
                job = self._locked_job(session, job_id)
                if job is None:
                    return
                job.error = storable_json(error)  # the message may quote a model's text
                transition(session, job, status, message)

        self._waiting(write, f"recording job {job_id}'s end")

    def _fail(self, job_id: str, exc: Exception) -> None:
        message = f"{type(exc).__name__}: {exc}"
        detail = "".join(traceback.format_exception_only(exc)).strip()
        self._finish(job_id, JobStatus.FAILED, f"job failed: {message}",
                     {"code": "training_error", "message": detail, "param": None})


def fit_to_context(hyperparameters: Any, base_path: Path) -> tuple[Any, str | None]:
    """The method's hyperparameters with ``max_seq_length`` cut to the base model's context
    (GPT-2's 256 positions, say), and the job event saying so; unchanged when it fits, when
    the method has no such field or the context is unknown. The api refuses a length the
    request set past the context; this covers the default."""
    length = getattr(hyperparameters, "max_seq_length", None)
    context = inspect_checkpoint(base_path).context_length
    if length is None or context is None or length <= context:
        return hyperparameters, None
    note = (f"max_seq_length {length} is past the model's context of {context} positions: "
            f"sequences are cut to {context} tokens")
    return hyperparameters.model_copy(update={"max_seq_length": context}), note
