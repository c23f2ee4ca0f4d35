"""The job state machine on real rows: allowed moves, refusals, and one event per transition."""

from __future__ import annotations

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from services.db.models import Job, JobEvent, Project
from services.errors import Conflict
from services.job_states import ALLOWED, TERMINAL, JobStatus, can_transition, transition


def make_job(session: Session, status: JobStatus = JobStatus.VALIDATING_FILES) -> Job:
    session.add(Project(id="proj-states", name="states"))
    session.flush()
    job = Job(id="ftjob-states", project_id="proj-states", model="m", training_file="file-x",
              seed=1, method={"type": "supervised"}, status=status.value)
    session.add(job)
    session.flush()
    return job


def test_the_happy_path_writes_one_event_per_transition(db_session: Session) -> None:
    job = make_job(db_session)
    for status in (JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.SUCCEEDED):
        transition(db_session, job, status, f"now {status}")
    db_session.flush()
    events = db_session.scalars(select(JobEvent).where(JobEvent.job_id == job.id)
                                .order_by(JobEvent.id)).all()
    assert [e.data["status"] for e in events] == ["queued", "running", "succeeded"]
    assert job.started_at is not None and job.finished_at is not None


@pytest.mark.parametrize("current", list(JobStatus))
@pytest.mark.parametrize("new", list(JobStatus))
def test_only_allowed_transitions_happen(db_session: Session, current: JobStatus,
                                         new: JobStatus) -> None:
    job = make_job(db_session, current)
    if new in ALLOWED[current]:
        transition(db_session, job, new, "ok")
        assert job.status == new.value
    else:
        with pytest.raises(Conflict):
            transition(db_session, job, new, "refused")
        assert job.status == current.value


def test_terminal_states_are_final_and_release_the_lease(db_session: Session) -> None:
    assert all(not ALLOWED[s] for s in TERMINAL)
    job = make_job(db_session, JobStatus.RUNNING)
    job.lease_owner = "w1"
    transition(db_session, job, JobStatus.FAILED, "boom")
    assert job.lease_owner is None and job.lease_expires_at is None
    assert not can_transition(job.status, JobStatus.RUNNING)
