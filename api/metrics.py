"""The api's Prometheus metrics: its requests (`HttpMetrics`), and, read when scraped, the jobs
in each state (PostgreSQL) and the messages waiting in each job queue (the broker).

A scrape never waits longer than `ApiSettings.metrics_collect_seconds` for those: the reads
run on a thread of their own, one at a time, and a scrape that comes while one is still
running (a slow database) waits on that one rather than starting another. Past the limit the
scrape answers without them and says so with `alignd_jobs_collect_ok 0`."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass

from celery import Celery
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session, sessionmaker

from services.celery_app import QUEUES
from services.db.engine import session_scope
from services.db.models import Job
from services.job_states import JobStatus
from services.web import HttpMetrics

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class JobCounts:
    by_state: dict[str, int]
    """Every job state, with the number of jobs in it (0 included)."""
    queue_depth: dict[str, int]
    """Job queue → messages waiting in the broker (queues the broker could not tell: absent)."""


def count_jobs(sessions: sessionmaker[Session], limit_seconds: float) -> dict[str, int]:
    """Jobs per state; PostgreSQL itself cancels the count past ``limit_seconds``."""
    counts = dict.fromkeys((status.value for status in JobStatus), 0)
    with session_scope(sessions) as session:
        session.execute(text(f"set local statement_timeout = {max(1, int(limit_seconds * 1000))}"))
        for status, count in session.execute(select(Job.status, func.count())
                                             .group_by(Job.status)):
            counts[status] = int(count)
    return counts


def queue_depths(celery: Celery, limit_seconds: float) -> dict[str, int]:
    """Messages waiting in each job queue. A passive declare asks without creating the queue;
    a queue that does not exist (Redis drops an empty list) has none waiting."""
    depths: dict[str, int] = {}
    with celery.connection_for_read() as connection:
        connection.ensure_connection(max_retries=1, timeout=limit_seconds)
        for queue in QUEUES:
            # A channel each: AMQP closes a channel whose passive declare failed.
            with connection.channel() as channel:
                try:
                    depths[queue] = int(channel.queue_declare(queue, passive=True)[1])
                except Exception:  # noqa: BLE001 - no such queue yet
                    depths[queue] = 0
    return depths


class JobsCollector:
    """A Prometheus collector: `JobCounts` read on each scrape, waited for at most
    ``limit_seconds``, with one read in flight at a time."""

    def __init__(self, read: Callable[[], JobCounts], limit_seconds: float) -> None:
        self.read, self.limit_seconds = read, limit_seconds
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="metrics-jobs")
        self._pending: Future[JobCounts] | None = None
        self._lock = threading.Lock()

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            if self._pending is None or self._pending.done():
                self._pending = self._pool.submit(self.read)
            pending = self._pending
        ok = GaugeMetricFamily("alignd_jobs_collect_ok", "1 when this scrape read the job "
                               "counts and queue depths in time, else 0")
        try:
            counts = pending.result(timeout=self.limit_seconds)
        except FutureTimeout:
            log.warning("/metrics: job counts took over %.1f s; answered without them",
                        self.limit_seconds)
            ok.add_metric([], 0)
            yield ok
            return
        except Exception as exc:  # noqa: BLE001 - a scrape reports, never fails
            log.warning("/metrics: job counts unavailable: %s: %s", type(exc).__name__,
                        str(exc).splitlines()[0][:200] if str(exc) else "")
            ok.add_metric([], 0)
            yield ok
            return
        jobs = GaugeMetricFamily("alignd_jobs", "Jobs in each state", labels=["state"])
        for state, count in counts.by_state.items():
            jobs.add_metric([state], count)
        depth = GaugeMetricFamily("alignd_job_queue_depth", "Job messages waiting in each "
                                  "broker queue", labels=["queue"])
        for queue, count in counts.queue_depth.items():
            depth.add_metric([queue], count)
        ok.add_metric([], 1)
        yield from (jobs, depth, ok)


class ApiMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self, read_jobs: Callable[[], JobCounts], limit_seconds: float) -> None:
        self.registry = CollectorRegistry()
        self.http = HttpMetrics(self.registry)
        self.registry.register(JobsCollector(read_jobs, limit_seconds))  # type: ignore[arg-type]

    @classmethod
    def reading(cls, sessions: sessionmaker[Session], celery: Celery,
                limit_seconds: float) -> ApiMetrics:
        def read() -> JobCounts:
            return JobCounts(count_jobs(sessions, limit_seconds),
                             queue_depths(celery, limit_seconds))

        return cls(read, limit_seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
