"""Runs one job: claim its lease, build the method's context from the job row, hand over to
the method, and record the outcome. The Celery task is a thin wrapper around `JobRunner.run`."""

from __future__ import annotations

import logging
import traceback
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session, sessionmaker

from services.artifacts import LocalArtifactStore
from services.datasets import read_rows
from services.db.engine import session_scope
from services.db.models import Checkpoint, File, Job, JobMetric
from services.ids import new_id
from services.job_states import JobStatus, record_event, transition
from services.methods import Method
from services.registry import fine_tuned_id, register_model, resolve_base_path
from trainer.context import JobStopped, TrainingContext, TrainingResult
from trainer.lease import Claim, Heartbeat, claim

log = logging.getLogger(__name__)


class LeaseLost(JobStopped):
    """Another worker owns the job now; this one must stop without touching it."""


class JobRunner:
    def __init__(self, sessions: sessionmaker[Session], store: LocalArtifactStore, owner: str,
                 lease_seconds: int, heartbeat_seconds: float):
        self.sessions, self.store, self.owner = sessions, store, owner
        self.lease_seconds, self.heartbeat_seconds = lease_seconds, heartbeat_seconds

    def run(self, job_id: str) -> str:
        outcome = claim(self.sessions, job_id, self.owner, self.lease_seconds)
        if outcome is Claim.SKIPPED:
            log.info("job %s: nothing to do here (finished, cancelled or leased elsewhere)", job_id)
            return outcome.value
        heartbeat = Heartbeat(self.sessions, job_id, self.owner, self.lease_seconds,
                              self.heartbeat_seconds).start()
        try:
            result = self._train(job_id, heartbeat)
            self._succeed(job_id, result)
        except LeaseLost:
            log.warning("job %s: lease lost; leaving it to its new worker", job_id)
            return "lease_lost"
        except JobStopped:
            self._finish(job_id, JobStatus.CANCELLED, "job cancelled")
            return JobStatus.CANCELLED.value
        except Exception as exc:
            log.exception("job %s failed", job_id)
            self._fail(job_id, exc)
            return JobStatus.FAILED.value
        finally:
            heartbeat.stop()
        return JobStatus.SUCCEEDED.value

    def _train(self, job_id: str, heartbeat: Heartbeat) -> TrainingResult:
        from trainer.methods import METHODS  # torch is imported only when a job runs

        ctx = self._context(job_id, heartbeat)
        method_type = self._job(job_id).method["type"]
        if ctx.resume_from is not None:
            ctx.log(f"resuming from checkpoint {ctx.resume_from.name}")
        return METHODS[method_type](ctx)

    def _job(self, job_id: str) -> Job:
        with session_scope(self.sessions) as session:
            job = session.get(Job, job_id)
            assert job is not None
            return job

    def _rows(self, session: Session, file_id: str | None) -> list[dict[str, Any]] | None:
        if file_id is None:
            return None
        row = session.get(File, file_id)
        if row is None:
            raise ValueError(f"file {file_id} no longer exists")
        return list(read_rows(self.store.iter_lines(row.sha256)))

    def _context(self, job_id: str, heartbeat: Heartbeat) -> TrainingContext:
        from trainer.checkpoint import latest_checkpoint

        with session_scope(self.sessions) as session:
            job = session.get(Job, job_id)
            assert job is not None
            base_path, _ = resolve_base_path(session, job.model)
            training, validation = (self._rows(session, job.training_file),
                                    self._rows(session, job.validation_file))
            method = Method.model_validate(job.method)
        checkpoint_root = self.store.directory("checkpoints", job_id)
        return TrainingContext(
            job_id=job_id, base_model_path=Path(base_path), training_rows=training or [],
            validation_rows=validation, hyperparameters=method.hyperparameters, seed=job.seed,
            output_dir=self.store.directory("models", job_id), checkpoint_root=checkpoint_root,
            resume_from=latest_checkpoint(checkpoint_root),
            report_metrics=lambda step, values: self._metrics(job_id, step, values),
            on_checkpoint=lambda step, path, values: self._checkpoint(job_id, step, path, values),
            log=lambda message: self._event(job_id, message),
            check_continue=lambda: self._check_continue(job_id, heartbeat),
        )

    def _check_continue(self, job_id: str, heartbeat: Heartbeat) -> None:
        if heartbeat.lost.is_set():
            raise LeaseLost(job_id)
        with session_scope(self.sessions) as session:
            row = session.execute(select(Job.cancel_requested, Job.lease_owner)
                                  .where(Job.id == job_id)).one()
        if row.lease_owner != self.owner:
            raise LeaseLost(job_id)
        if row.cancel_requested:
            raise JobStopped("cancelled")

    def _metrics(self, job_id: str, step: int, values: dict[str, float]) -> None:
        rows = [{"job_id": job_id, "step": step, "name": k, "value": float(v)}
                for k, v in values.items()]
        statement = insert(JobMetric).values(rows)
        statement = statement.on_conflict_do_update(
            index_elements=["job_id", "name", "step"], set_={"value": statement.excluded.value})
        with session_scope(self.sessions) as session:
            session.execute(statement)

    def _checkpoint(self, job_id: str, step: int, path: Path, values: dict[str, float]) -> None:
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

    def _event(self, job_id: str, message: str) -> None:
        with session_scope(self.sessions) as session:
            record_event(session, job_id, message)

    def _locked_job(self, session: Session, job_id: str) -> Job | None:
        job = session.scalar(select(Job).where(Job.id == job_id).with_for_update())
        return job if job is not None and job.lease_owner == self.owner else None

    def _succeed(self, job_id: str, result: TrainingResult) -> None:
        with session_scope(self.sessions) as session:
            job = self._locked_job(session, job_id)
            if job is None:
                raise LeaseLost(job_id)
            model_id = fine_tuned_id(job.model, job.suffix, job.id)
            register_model(session, model_id=model_id, project_id=job.project_id,
                           kind=result.kind, path=str(result.output_dir), base_model=job.model,
                           job_id=job.id, metadata={"final_metrics": result.final_metrics})
            job.fine_tuned_model, job.trained_tokens = model_id, result.trained_tokens
            transition(session, job, JobStatus.SUCCEEDED, f"job succeeded; model {model_id}",
                       data={"fine_tuned_model": model_id, **result.final_metrics})

    def _finish(self, job_id: str, status: JobStatus, message: str,
                error: dict[str, Any] | None = None) -> None:
        with session_scope(self.sessions) as session:
            job = self._locked_job(session, job_id)
            if job is None:
                return
            job.error = error
            transition(session, job, status, message)

    def _fail(self, job_id: str, exc: Exception) -> None:
        message = f"{type(exc).__name__}: {exc}"
        detail = "".join(traceback.format_exception_only(exc)).strip()
        self._finish(job_id, JobStatus.FAILED, f"job failed: {message}",
                     {"code": "training_error", "message": detail, "param": None})
