"""A worker's Prometheus metrics, on a port of its own (`ALIGND_METRICS_PORT`): a worker has no
HTTP server, and with the solo pool each worker is one process, so each is scraped on its own
(no multiprocess mode). Readable from `ALIGND_METRICS_NETWORKS`, elsewhere with the admin key,
as every service's /metrics."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, Counter, Gauge, make_wsgi_app

from services.observability import metrics_readable, metrics_refusal
from services.settings import WorkerSettings

log = logging.getLogger(__name__)


class WorkerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.jobs = Counter("alignd_worker_jobs", "Job runs this worker ended, by outcome "
                            "(succeeded, failed, cancelled, lease_lost, skipped, ...)",
                            ["outcome"], registry=self.registry)
        self.running = Gauge("alignd_worker_running_jobs", "Jobs this worker is running now",
                             registry=self.registry)
        self.steps = Counter("alignd_worker_steps", "Optimizer steps this worker's jobs took "
                             "(rate() gives the step rate)", registry=self.registry)
        self.step = Gauge("alignd_worker_job_step", "The running job's latest optimizer step",
                          registry=self.registry)

    def stepped(self, step: int) -> None:
        self.steps.inc()
        self.step.set(step)

    def serve(self, settings: WorkerSettings) -> WSGIServer | None:
        """/metrics on `settings.metrics_host`:`metrics_port`, on a thread of its own; None
        when no port is set or it cannot be bound (the worker trains on without it)."""
        if not settings.metrics_port:
            return None
        app = _guarded(make_wsgi_app(self.registry), settings.metrics_networks,
                       settings.admin_key.get_secret_value())
        try:
            server = make_server(settings.metrics_host, settings.metrics_port, app,
                                 _ThreadingServer, _QuietHandler)
        except OSError as exc:
            log.error("worker metrics not served: %s:%s cannot be bound (%s); set "
                      "ALIGND_METRICS_PORT to a free port", settings.metrics_host,
                      settings.metrics_port, exc)
            return None
        threading.Thread(target=server.serve_forever, name="worker-metrics", daemon=True).start()
        log.info("worker metrics on http://%s:%s/metrics", settings.metrics_host,
                 settings.metrics_port)
        return server


WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def _guarded(app: WsgiApp, networks: list[str], admin_key: str) -> WsgiApp:
    def guarded(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if metrics_readable(environ.get("REMOTE_ADDR"), environ.get("HTTP_AUTHORIZATION", ""),
                            networks, admin_key):
            return app(environ, start_response)
        refused = metrics_refusal(networks)
        start_response("403 Forbidden", [("Content-Type", "application/json")])
        return [json.dumps(refused.envelope()).encode()]

    return guarded


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass
