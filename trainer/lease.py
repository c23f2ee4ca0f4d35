"""Job leases: at most one worker runs a job at a time, and a job whose worker died is found
and handed to another.

A worker takes the lease (owner, expiry) in a row-locked transaction and renews it from a
heartbeat thread. A re-delivered message whose job is leased by a live worker is dropped; when
a lease expires, any worker's sweeper re-enqueues the job, and the worker that takes it resumes
from the last checkpoint."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import Enum

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from services.db.engine import DATABASE_DOWN, session_scope
from services.db.models import Job
from services.job_states import TERMINAL, UNPUBLISHED, JobStatus, record_event, transition

log = logging.getLogger(__name__)
REQUEUED_PREFIX = "requeued-by:"


class Claim(Enum):
    STARTED = "started"      # first run of a queued job
    RESUMED = "resumed"      # a running job whose worker's lease expired
    SKIPPED = "skipped"      # finished, cancelled, or leased by a live worker


def _now() -> datetime:
    return datetime.now(UTC)


def _claimable(job: Job, owner: str) -> bool:
    if job.lease_owner is None or job.lease_owner == owner:
        return True
    if job.lease_owner.startswith(REQUEUED_PREFIX):
        return True
    return job.lease_expires_at is None or job.lease_expires_at < _now()


def claim(sessions: sessionmaker[Session], job_id: str, owner: str, lease_seconds: int) -> Claim:
    with session_scope(sessions) as session:
        job = session.scalar(select(Job).where(Job.id == job_id).with_for_update())
        if job is None or job.status in TERMINAL or not _claimable(job, owner):
            return Claim.SKIPPED
        if job.status not in (JobStatus.QUEUED, JobStatus.RUNNING):
            return Claim.SKIPPED
        job.lease_owner, job.lease_expires_at = owner, _now() + timedelta(seconds=lease_seconds)
        job.attempts += 1
        if job.status == JobStatus.QUEUED:
            transition(session, job, JobStatus.RUNNING, f"job started on worker {owner}")
            return Claim.STARTED
        record_event(session, job.id, f"worker {owner} took over the job (attempt {job.attempts})",
                     level="warning", data={"attempt": job.attempts})
        return Claim.RESUMED


def renew(sessions: sessionmaker[Session], job_id: str, owner: str,
          lease_seconds: int) -> tuple[bool, bool]:
    """Extend the lease; returns (still ours, cancellation requested)."""
    with session_scope(sessions) as session:
        row = session.execute(
            update(Job)
            .where(Job.id == job_id, Job.lease_owner == owner)
            .values(lease_expires_at=_now() + timedelta(seconds=lease_seconds))
            .returning(Job.cancel_requested)
        ).first()
    return (row is not None, bool(row and row[0]))


@dataclass
class Heartbeat:
    """Renews a lease in the background and raises flags the training loop polls for free:
    `lost` (another worker owns the job now) and `cancelled`."""

    sessions: sessionmaker[Session]
    job_id: str
    owner: str
    lease_seconds: int
    interval: float

    def __post_init__(self) -> None:
        self.lost = threading.Event()
        self.cancelled = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"lease-{self.job_id}", daemon=True)

    def start(self) -> Heartbeat:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                ours, cancel_requested = renew(self.sessions, self.job_id, self.owner,
                                               self.lease_seconds)
            except DATABASE_DOWN as exc:  # a restart or failover: the lease has slack
                log.warning("lease renewal failed for %s, PostgreSQL is unavailable: %s",
                            self.job_id, str(exc).splitlines()[0][:200])
                continue
            except Exception:  # anything else: try again next beat all the same
                log.warning("lease renewal failed for %s", self.job_id, exc_info=True)
                continue
            if cancel_requested:
                self.cancelled.set()
            if not ours:
                self.lost.set()
                return


def sweep_expired(sessions: sessionmaker[Session], owner: str,
                  enqueue: Callable[[str], None], lease_seconds: int) -> list[str]:
    """Re-enqueue running jobs whose lease expired (their worker died)."""
    with session_scope(sessions) as session:
        jobs = list(session.scalars(
            select(Job).where(Job.status == JobStatus.RUNNING, Job.lease_expires_at < _now())
            .with_for_update(skip_locked=True)))
        for job in jobs:
            # Reserve the job so other sweepers leave it alone until a worker claims it.
            job.lease_owner = REQUEUED_PREFIX + owner
            job.lease_expires_at = _now() + timedelta(seconds=lease_seconds)
            record_event(session, job.id, "the job's worker stopped renewing its lease; "
                         "re-enqueued to resume from the last checkpoint", level="warning")
        ids = [job.id for job in jobs]
    for job_id in ids:
        enqueue(job_id)
    return ids


def sweep_unclaimed(sessions: sessionmaker[Session], enqueue: Callable[[str], None],
                    requeue_after_seconds: float) -> list[str]:
    """Publish again the queued jobs no worker has taken since their last publish this long
    ago (their message was lost, e.g. with a broker restart). A duplicate message is harmless:
    the lease makes every extra delivery a no-op."""
    cutoff = _now() - timedelta(seconds=requeue_after_seconds)
    with session_scope(sessions) as session:
        jobs = list(session.scalars(
            select(Job).where(Job.status == JobStatus.QUEUED, Job.enqueued_at < cutoff)
            .with_for_update(skip_locked=True)))
        for job in jobs:
            if job.enqueued_at is not None and job.enqueued_at <= UNPUBLISHED:
                message = "the job queue is back; published the job"
            else:
                message = (f"no worker took the job in {requeue_after_seconds:.0f} s; published "
                           "it again")
            job.enqueued_at = _now()
            record_event(session, job.id, message, level="warning")
        ids = [job.id for job in jobs]
    for job_id in ids:
        enqueue(job_id)
    return ids
