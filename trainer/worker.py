"""The Celery worker: registers the job task, starts a sweeper for jobs whose worker died, and
serves its Prometheus metrics on a port of its own (`ALIGND_METRICS_PORT`)."""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable

from celery import Celery, Task
from celery.signals import setup_logging, worker_ready, worker_shutting_down

from services.artifacts import LocalArtifactStore
from services.celery_app import (
    REQUEST_ID_TASK_HEADER,
    TASK_EXPORT_MERGED,
    TASK_RUN_JOB,
    enqueue_job,
    make_celery,
)
from services.db.engine import DATABASE_DOWN, session_factory
from services.db.migrate import ensure_migrated
from services.embedded import resolve_database_url
from services.observability import (
    accepted_request_id,
    configure_logging,
    new_request_id,
    request_id_bound,
)
from services.settings import WorkerSettings
from trainer.allocator import keep_freed_memory
from trainer.context import RolloutEngine
from trainer.export import MergedExport
from trainer.lease import sweep_expired, sweep_unclaimed
from trainer.metrics import WorkerMetrics
from trainer.runner import JobRunner

log = logging.getLogger(__name__)


def build_worker_app(settings: WorkerSettings) -> Celery:
    url = resolve_database_url(settings)
    ensure_migrated(url)
    sessions = session_factory(url)
    owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
    runner = JobRunner(url, LocalArtifactStore(settings.artifacts_dir), owner,
                       settings.lease_seconds, settings.heartbeat_seconds, settings.reward_url,
                       settings.admin_key.get_secret_value(), settings.reward_retry_seconds,
                       RolloutEngine(settings.rollout_engine,
                                     settings.rollout_vllm_gpu_memory_utilization,
                                     settings.rollout_vllm_kv_cache_gib),
                       settings.database_retry_seconds, WorkerMetrics())
    app = make_celery(settings)

    def with_request_id(task: Task, work: Callable[[str], str], argument: str) -> str:
        """``work(argument)`` under the id of the request that sent the task, so its logs and
        the calls it makes carry it; a message the sweeper re-published has none, and gets
        one of its own."""
        given = getattr(task.request, REQUEST_ID_TASK_HEADER, None)
        with request_id_bound(accepted_request_id(given) or new_request_id()):
            return work(argument)

    @app.task(name=TASK_RUN_JOB, bind=True)
    def run_job(task: Task, job_id: str) -> str:
        return with_request_id(task, runner.run, job_id)

    exports = MergedExport(sessions)

    @app.task(name=TASK_EXPORT_MERGED, bind=True)
    def export_merged(task: Task, model_id: str) -> str:
        return with_request_id(task, exports.run, model_id)

    stop = threading.Event()

    def sweep_forever() -> None:
        queue = settings.queues[0]
        while not stop.wait(settings.sweep_seconds):
            try:
                ids = sweep_expired(sessions, owner, lambda j: enqueue_job(app, j, queue),
                                    settings.lease_seconds)
                ids += sweep_unclaimed(sessions, lambda j: enqueue_job(app, j, queue),
                                       settings.requeue_queued_seconds)
                if ids:
                    log.warning("re-enqueued jobs (expired lease or lost message): %s", ", ".join(ids))
            except DATABASE_DOWN as exc:
                log.warning("lease sweep skipped, PostgreSQL is unavailable: %s",
                            str(exc).splitlines()[0][:200])
            except Exception:
                log.exception("lease sweep failed; retrying")

    @worker_ready.connect(weak=False)
    def _start_sweeper(**_: object) -> None:
        threading.Thread(target=sweep_forever, name="lease-sweeper", daemon=True).start()
        runner.metrics.serve(settings)

    @setup_logging.connect(weak=False)
    def _logging(**_: object) -> None:  # Celery leaves logging to this receiver
        configure_logging(settings.log_level, settings.log_format)

    @worker_shutting_down.connect(weak=False)
    def _stop_sweeper(**_: object) -> None:
        stop.set()

    return app


def run_worker(settings: WorkerSettings | None = None, concurrency_name: str | None = None) -> None:
    settings = settings or WorkerSettings()
    keep_freed_memory()  # jobs run in this very process (solo pool)
    if settings.torch_threads:
        import torch

        torch.set_num_threads(settings.torch_threads)
    app = build_worker_app(settings)
    name = concurrency_name or f"alignd-{uuid.uuid4().hex[:8]}@%h"
    # solo pool: the job runs in the worker's own process, so SIGKILL of the worker is the
    # crash the lease and acks_late recover from, and torch has the process's threads.
    argv = ["worker", "--pool=solo", f"--queues={','.join(settings.queues)}", f"--hostname={name}",
            f"--loglevel={settings.log_level}", "--without-mingle", "--without-gossip"]
    app.worker_main(argv)
