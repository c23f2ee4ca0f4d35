"""The Celery app, task names and queues, shared by the api (which sends tasks by name and
never imports the trainer) and the trainer (which registers the tasks)."""

from __future__ import annotations

from celery import Celery

from services.embedded import broker_options
from services.observability import current_request_id
from services.settings import AlignSettings

TASK_RUN_JOB = "alignd.jobs.run"
TASK_EXPORT_MERGED = "alignd.models.export_merged"
"""Merge a LoRA adapter into its base model's weights (`services.model_exports`)."""
QUEUES = ("cpu", "gpu")
REQUEST_ID_TASK_HEADER = "alignd_request_id"
"""The message header that carries the enqueuing request's id to the worker (a header, not an
argument: a worker of an older release still takes the message)."""


def make_celery(settings: AlignSettings) -> Celery:
    url, transport_options = broker_options(settings)
    app = Celery("alignd", broker=url, set_as_current=False)
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        task_default_queue="cpu",
        # A job's message is acknowledged only after the task returns, and a worker that dies
        # mid-task gives it back: the job then resumes from its last checkpoint.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        broker_transport_options=transport_options,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
    )
    return app


def enqueue_job(app: Celery, job_id: str, queue: str) -> None:
    _send(app, TASK_RUN_JOB, job_id, queue)


def enqueue_merged_export(app: Celery, model_id: str, queue: str) -> None:
    _send(app, TASK_EXPORT_MERGED, model_id, queue)


def _send(app: Celery, task: str, argument: str, queue: str) -> None:
    if queue not in QUEUES:
        raise ValueError(f"queue must be one of {QUEUES}, got {queue!r}")
    request_id = current_request_id()
    headers = {REQUEST_ID_TASK_HEADER: request_id} if request_id else None
    app.send_task(task, args=[argument], queue=queue, headers=headers)
