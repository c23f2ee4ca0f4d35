"""Job submit → `running` latency with the Redis broker and with the embedded broker.

What it measures: for each job, the wall time from just before the client sends
POST /v1/fine_tuning/jobs to the moment a worker claims the job (the job row's `started_at`,
written by the worker in the same transaction as the `running` status event). The api runs
in a thread of this process; one `alignd worker` process per broker is started and warmed up
with one job before measuring, so start-up is excluded. Jobs are tiny (max_steps=1 on the
random demo Llama) and each one finishes before the next is submitted, alternating between
the two brokers so both see the same machine load. Both use the same local PostgreSQL.

  redis     ALIGND_BROKER_URL=redis://127.0.0.1:6379/<empty db>
  embedded  no broker URL, ALIGND_DATA_DIR=<temp dir>: Celery's filesystem transport

How to read it: `embedded/redis` > 1 means the embedded broker takes that many times longer
to hand a job to a worker. Also printed: the server-side part (started_at − the job row's
created_at) and how long the POST itself took.

`--what-if-polling-interval S` adds a third worker on another embedded broker whose transport
options carry `polling_interval=S` (kombu's virtual transports sleep 1 s between empty polls
by default). alignd has no setting for it, so that worker is started through a small wrapper
that patches `services.celery_app.broker_options`: a what-if for a possible fix, not alignd.

    python -m bench.submit_latency            # 20 jobs per broker
    python -m bench.submit_latency --quick    # 4 jobs per broker
    python -m bench.submit_latency --what-if-polling-interval 0.1
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from bench._harness import (
    ServiceProcess,
    Summary,
    api_thread,
    client,
    empty_redis_db,
    fresh_database,
    job_body,
    machine_info,
    new_project_key,
    print_table,
    ratio,
    save_model,
    scratch_dir,
    service_env,
    supervised_rows,
    upload_rows,
    wait_for,
    wait_worker_ready,
)
from services.web import ServerThread

TERMINAL = {"succeeded", "failed", "cancelled"}
PATCHED_WORKER = """
import services.celery_app as celery_app
unpatched = celery_app.broker_options
def broker_options(settings):
    url, options = unpatched(settings)
    return url, {**options, "polling_interval": %r}
celery_app.broker_options = broker_options
from cli.main import app
app(["worker"])
"""


@dataclass
class Broker:
    """One api thread and one worker process on one broker, and the timings taken there."""

    name: str
    http: httpx.Client
    training_file: str
    worker: ServiceProcess
    to_running: list[float] = field(default_factory=list)
    """Seconds from the client's POST to started_at."""
    server_side: list[float] = field(default_factory=list)
    """Seconds from the job row's created_at to started_at."""
    post: list[float] = field(default_factory=list)
    """Seconds the POST took to answer."""


def run_job(broker: Broker, sessions: sessionmaker[Session], timeout: float) -> None:
    """Submit one tiny job, wait until it is finished, and record its latencies."""
    from services.db.models import Job

    body = job_body(broker.training_file, max_steps=1, batch_size=4, checkpoint_every=1000)
    sent = time.time()
    response = broker.http.post("/v1/fine_tuning/jobs", json=body)
    answered = time.time()
    response.raise_for_status()
    job_id = response.json()["id"]

    def finished() -> tuple[str, object, object] | None:
        with sessions() as session:
            row = session.execute(select(Job.status, Job.created_at, Job.started_at)
                                  .where(Job.id == job_id)).one()
        return tuple(row) if row.status in TERMINAL else None  # type: ignore[return-value]

    try:
        status, created_at, started_at = wait_for(finished, timeout, interval=0.02,
                                                  what=f"{broker.name} job {job_id}")
    except TimeoutError:
        raise RuntimeError(f"{broker.name} worker log:\n{broker.worker.log_tail()}") from None
    if status != "succeeded" or started_at is None:
        raise RuntimeError(f"{broker.name} job {job_id} {status}:\n{broker.worker.log_tail()}")
    broker.to_running.append(started_at.timestamp() - sent)  # type: ignore[attr-defined]
    broker.server_side.append((started_at - created_at).total_seconds())  # type: ignore[operator]
    broker.post.append(answered - sent)


def start_broker(name: str, env: dict[str, str], log_dir: Path, rows: list[dict[str, str]],
                 stack: list[object], polling_interval: float | None = None) -> Broker:
    api = api_thread(env).__enter__()
    stack.append(api)
    worker_env = {**env, "ALIGND_LOG_LEVEL": "INFO", "ALIGND_TORCH_THREADS": "1"}
    log_path = log_dir / f"worker-{name}.log"
    if polling_interval is None:
        worker = ServiceProcess.alignd(["worker"], worker_env, log_path)
    else:
        command = [sys.executable, "-c", PATCHED_WORKER % polling_interval]
        worker = ServiceProcess(command, worker_env, log_path)
    worker.start()
    stack.append(worker)
    wait_worker_ready(worker)
    http = client(api.url, new_project_key(api.url))
    stack.append(http)
    return Broker(name=name, http=http, training_file=upload_rows(http, rows), worker=worker)


def measure(jobs: int, timeout: float, polling_interval: float | None) -> list[Broker]:
    with scratch_dir("alignd-bench-submit-") as scratch, fresh_database() as database_url, \
            empty_redis_db() as redis_url:
        model = save_model(scratch / "model")
        rows = supervised_rows(16, seed=1)
        stack: list[object] = []
        try:
            redis = start_broker("redis", service_env(database_url, redis_url,
                                                      scratch / "redis", model),
                                 scratch / "logs", rows, stack)
            embedded = start_broker("embedded", service_env(database_url, None,
                                                            scratch / "embedded", model),
                                    scratch / "logs", rows, stack)
            brokers = [redis, embedded]
            if polling_interval is not None:
                brokers.append(start_broker(
                    f"embedded@{polling_interval:g}s",
                    service_env(database_url, None, scratch / "what-if", model),
                    scratch / "logs", rows, stack, polling_interval))
            from services.db.engine import session_factory

            sessions = session_factory(database_url)
            for broker in brokers:  # warm-up: the first job imports torch and loads the model
                run_job(broker, sessions, timeout=180)
                for timings in (broker.to_running, broker.server_side, broker.post):
                    timings.clear()
            for i in range(jobs):
                for broker in brokers[i % len(brokers):] + brokers[:i % len(brokers)]:
                    run_job(broker, sessions, timeout)
            return brokers
        finally:
            for item in reversed(stack):
                if isinstance(item, ServerThread):
                    item.__exit__(None, None, None)
                elif isinstance(item, ServiceProcess):
                    item.stop()
                elif isinstance(item, httpx.Client):
                    item.close()


def report(brokers: list[Broker]) -> None:
    rows = []
    for label, attribute in (("POST → running", "to_running"),
                             ("created_at → started_at", "server_side"),
                             ("POST answered", "post")):
        for broker in brokers:
            s = Summary.of(getattr(broker, attribute))
            rows.append([f"{label} [{broker.name}]", s.n, s.median * 1000, s.p95 * 1000,
                         s.minimum * 1000, s.maximum * 1000])
    print_table(["latency (ms)", "n", "median", "p95", "min", "max"], rows)
    print()
    r = Summary.of(brokers[0].to_running)
    for broker in brokers[1:]:
        e = Summary.of(broker.to_running)
        print(f"submit → running, {broker.name}/redis: median {ratio(e.median, r.median):.2f}x, "
              f"p95 {ratio(e.p95, r.p95):.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="4 jobs per broker (< 60 s)")
    parser.add_argument("--jobs", type=int, default=None, help="measured jobs per broker (20)")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per job at most")
    parser.add_argument("--what-if-polling-interval", type=float, default=None, metavar="S",
                        help="also time an embedded broker polling every S seconds (patched)")
    args = parser.parse_args()
    jobs = args.jobs or (4 if args.quick else 20)
    print(f"machine: {machine_info()}; {jobs} jobs per broker after 1 warm-up job each\n")
    report(measure(jobs, args.timeout, args.what_if_polling_interval))


if __name__ == "__main__":
    main()
