"""Leases and cancellation signals on the real database: one owner at a time, expired leases
swept and re-enqueued, a NOTIFY reaching the running job's flag."""

from __future__ import annotations

import threading
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from services.db.engine import session_factory, session_scope
from services.db.models import Job, Project
from services.job_signals import CancelListener, notify_cancel
from services.job_states import JobStatus
from tests.conftest import wait_for
from trainer.lease import Claim, claim, renew, sweep_expired, sweep_unclaimed


@pytest.fixture
def sessions(database_url: str) -> sessionmaker[Session]:
    return session_factory(database_url)


@pytest.fixture
def job_id(sessions: sessionmaker[Session]) -> str:
    suffix = uuid.uuid4().hex[:8]
    with session_scope(sessions) as session:
        session.add(Project(id=f"proj-{suffix}", name=f"lease-{suffix}"))
        session.flush()
        session.add(Job(id=f"ftjob-{suffix}", project_id=f"proj-{suffix}", model="m",
                        training_file="f", seed=0, method={"type": "supervised"},
                        status=JobStatus.QUEUED.value))
    return f"ftjob-{suffix}"


def expire(sessions: sessionmaker[Session], job_id: str) -> None:
    with session_scope(sessions) as session:
        session.execute(update(Job).where(Job.id == job_id).values(
            lease_expires_at=datetime.now(UTC) - timedelta(seconds=1)))


def test_one_owner_at_a_time_and_takeover_after_expiry(sessions, job_id) -> None:
    assert claim(sessions, job_id, "w1", 60) is Claim.STARTED
    assert claim(sessions, job_id, "w2", 60) is Claim.SKIPPED  # re-delivered while w1 lives
    assert renew(sessions, job_id, "w1", 60) == (True, False)
    expire(sessions, job_id)
    assert claim(sessions, job_id, "w2", 60) is Claim.RESUMED
    assert renew(sessions, job_id, "w1", 60) == (False, False)  # w1 learns it lost the job
    with session_scope(sessions) as session:
        job = session.get(Job, job_id)
        assert job is not None and job.lease_owner == "w2" and job.attempts == 2


def test_concurrent_claims_have_one_winner(sessions, job_id) -> None:
    results: list[Claim] = []
    threads = [threading.Thread(target=lambda i=i: results.append(claim(sessions, job_id,
                                                                         f"w{i}", 60)))
               for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(r.value for r in results) == ["skipped"] * 7 + ["started"]


def test_sweeper_re_enqueues_expired_jobs_once(sessions, job_id) -> None:
    claim(sessions, job_id, "dead-worker", 60)
    sent: list[str] = []
    assert job_id not in sweep_expired(sessions, "sweeper-a", sent.append, 30)
    expire(sessions, job_id)
    assert job_id in sweep_expired(sessions, "sweeper-a", sent.append, 30)
    assert job_id not in sweep_expired(sessions, "sweeper-b", sent.append, 30)  # reserved
    assert sent.count(job_id) == 1
    assert claim(sessions, job_id, "w-new", 60) is Claim.RESUMED


def test_queued_jobs_whose_message_was_lost_are_published_again(sessions, job_id) -> None:
    sent: list[str] = []
    with session_scope(sessions) as session:
        session.execute(update(Job).where(Job.id == job_id).values(
            enqueued_at=datetime.now(UTC) - timedelta(seconds=30)))
    assert job_id not in sweep_unclaimed(sessions, sent.append, 60)  # not yet overdue
    assert job_id in sweep_unclaimed(sessions, sent.append, 10)
    assert job_id not in sweep_unclaimed(sessions, sent.append, 10)  # published just now
    assert sent.count(job_id) == 1
    assert claim(sessions, job_id, "w1", 60) is Claim.STARTED
    assert claim(sessions, job_id, "w2", 60) is Claim.SKIPPED  # the duplicate is a no-op


def test_terminal_jobs_are_never_claimed(sessions, job_id) -> None:
    with session_scope(sessions) as session:
        session.execute(update(Job).where(Job.id == job_id).values(status="cancelled"))
    assert claim(sessions, job_id, "w1", 60) is Claim.SKIPPED


def test_cancel_notification_sets_the_flag(sessions, job_id, database_url: str) -> None:
    flag, other = threading.Event(), threading.Event()
    listener = CancelListener(database_url, job_id, flag).start()
    bystander = CancelListener(database_url, "ftjob-other", other).start()
    try:
        with session_scope(sessions) as session:
            notify_cancel(session, job_id)
            assert not flag.wait(0.3)  # delivered on commit, not before
        wait_for(flag.is_set, 10, interval=0.02, message="the cancel notification")
        assert not other.is_set()
    finally:
        listener.stop()
        bystander.stop()
