"""Prometheus metrics of the inference service, on a registry of its own (one per app)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from services.web import HttpMetrics

FIRST_TOKEN_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class InferenceMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("alignd_inference_requests_total", "Generation requests",
                                ["endpoint", "status"], registry=self.registry)
        self.generated_tokens = Counter("alignd_inference_generated_tokens_total",
                                        "Tokens generated (rate() gives tokens/s)",
                                        registry=self.registry)
        self.prompt_tokens = Counter("alignd_inference_prompt_tokens_total", "Prompt tokens",
                                     registry=self.registry)
        self.latency = Histogram("alignd_inference_request_seconds", "Request latency (a stream until its last event)",
                                 ["endpoint"], registry=self.registry)
        self.batch_size = Histogram("alignd_inference_batch_size", "Rows per decode step",
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
                                    registry=self.registry)
        self.queue_depth = Gauge("alignd_inference_queue_depth",
                                 "Sequences waiting for a decode slot (the same as "
                                 "alignd_inference_waiting_sequences)", registry=self.registry)
        self.waiting = Gauge("alignd_inference_waiting_sequences",
                             "Sequences waiting for a decode slot", registry=self.registry)
        self.running = Gauge("alignd_inference_running_sequences",
                             "Sequences decoding now", registry=self.registry)
        self.first_token = Histogram("alignd_inference_time_to_first_token_seconds",
                                     "From a sequence's submission to the engine (its wait "
                                     "for a slot included) to its first token",
                                     buckets=FIRST_TOKEN_SECONDS, registry=self.registry)
        self.http = HttpMetrics(self.registry)

    def watch_engine(self, depth: Callable[[], int], running: Callable[[], int]) -> None:
        self.queue_depth.set_function(depth)
        self.waiting.set_function(depth)
        self.running.set_function(running)

    def render(self) -> bytes:
        return generate_latest(self.registry)
