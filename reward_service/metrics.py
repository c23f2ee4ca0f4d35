"""Prometheus metrics of one reward service app (a registry of its own, so several apps in one
process, as in tests, do not collide)."""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)

from services.web import HttpMetrics

BATCH_ROWS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class RewardMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("alignd_reward_requests", "Score requests by reward type and "
                                "outcome", ["type", "outcome"], registry=self.registry)
        self.items = Counter("alignd_reward_items", "Items scored", ["type"],
                             registry=self.registry)
        self.request_seconds = Histogram("alignd_reward_request_seconds", "Time to score a "
                                         "request", buckets=SECONDS, registry=self.registry)
        self.batch_rows = Histogram("alignd_reward_batch_rows", "Rows per forward pass",
                                    buckets=BATCH_ROWS, registry=self.registry)
        self.batch_tokens = Histogram("alignd_reward_batch_padded_tokens", "Padded tokens per "
                                      "forward pass", buckets=tuple(2**k for k in range(4, 16)),
                                      registry=self.registry)
        self.forward_seconds = Histogram("alignd_reward_forward_seconds", "Forward pass time",
                                         buckets=SECONDS, registry=self.registry)
        self.model_cache = Counter("alignd_reward_model_cache", "Reward model look-ups by "
                                   "whether the model was already loaded (hit) or had to be "
                                   "loaded (miss)", ["result"], registry=self.registry)
        self.http = HttpMetrics(self.registry)

    def observe_batch(self, rows: int, padded_tokens: int, seconds: float) -> None:
        self.batch_rows.observe(rows)
        self.batch_tokens.observe(padded_tokens)
        self.forward_seconds.observe(seconds)

    def observe_cache(self, hit: bool) -> None:
        self.model_cache.labels("hit" if hit else "miss").inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
