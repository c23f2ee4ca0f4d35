"""`services.rate_limit`: per-key token buckets shared through a real Redis (the test session's
own database), and the process's own buckets when there is no Redis or it does not answer."""

from __future__ import annotations

import asyncio
import logging
import uuid

import pytest
import redis

from services.errors import TooManyRequests
from services.rate_limit import RateLimiter
from services.settings import AlignSettings
from services.web import free_port


def admitted(limiter: RateLimiter, key_id: str, *, on_loop: bool = False) -> bool:
    try:
        if on_loop:
            asyncio.run(limiter.admit_async(key_id))
        else:
            limiter.admit(key_id)
        return True
    except TooManyRequests as refused:
        assert refused.code == "rate_limited" and refused.retry_after >= 1
        return False


def test_a_service_s_processes_draw_from_one_bucket_per_key(broker_url: str) -> None:
    # Two replicas of one service: one answering on worker threads, one on an event loop.
    first = RateLimiter(3, redis_url=broker_url, scope="reward")
    second = RateLimiter(3, redis_url=broker_url, scope="reward")
    key = f"key-{uuid.uuid4().hex[:8]}"
    calls = [admitted(first, key), admitted(second, key, on_loop=True), admitted(first, key)]
    assert calls == [True, True, True]
    assert not admitted(second, key, on_loop=True) and not admitted(first, key)
    assert admitted(second, f"key-{uuid.uuid4().hex[:8]}")  # another key has its own bucket
    assert admitted(RateLimiter(3, redis_url=broker_url, scope="inference"), key)  # per service

    bucket = redis.Redis.from_url(broker_url)
    try:  # an idle bucket is full again within a minute, so Redis forgets it by then
        assert 0 < bucket.pttl(f"alignd:rate:reward:{key}") <= 60_000
    finally:
        bucket.close()


def test_a_redis_that_does_not_answer_leaves_the_count_to_the_process(
        caplog: pytest.LogCaptureFixture) -> None:
    port = free_port()
    limiter = RateLimiter(3, redis_url=f"redis://:secret@127.0.0.1:{port}/0", scope="api")
    key = f"key-{uuid.uuid4().hex[:8]}"
    with caplog.at_level(logging.WARNING, logger="services.rate_limit"):
        assert [admitted(limiter, key) for _ in range(4)] == [True, True, True, False]
        assert admitted(limiter, f"key-{uuid.uuid4().hex[:8]}", on_loop=True)
    warnings = [r for r in caplog.records if r.name == "services.rate_limit"]
    assert len(warnings) == 1, "one warning for the outage, not one per request"
    assert f"127.0.0.1:{port}" in warnings[0].getMessage()
    assert "secret" not in warnings[0].getMessage()


def test_without_a_limit_redis_is_never_asked(broker_url: str) -> None:
    limiter = RateLimiter(0, redis_url=broker_url, scope="api")
    assert limiter.shared is None
    assert all(admitted(limiter, "key-unlimited") for _ in range(100))


def test_the_limits_live_in_the_broker_s_redis_unless_told_otherwise(
        monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in ("ALIGND_BROKER_URL", "ALIGND_RATE_LIMIT_URL"):
        monkeypatch.delenv(variable, raising=False)

    def store(**values: str) -> str | None:
        return AlignSettings(_env_file=None, **values).rate_limit_store  # type: ignore[call-arg, arg-type]

    assert store() is None  # embedded mode: the filesystem broker
    assert store(broker_url="redis://redis:6379/0") == "redis://redis:6379/0"
    assert store(broker_url="amqp://rabbit//") is None
    assert store(broker_url="amqp://rabbit//",
                 rate_limit_url="rediss://cache:6380/2") == "rediss://cache:6380/2"
    assert store(broker_url="redis://redis:6379/0",
                 rate_limit_url="redis://cache:6379/3") == "redis://cache:6379/3"
    with pytest.raises(ValueError, match="ALIGND_RATE_LIMIT_URL must be a Redis URL"):
        store(rate_limit_url="amqp://rabbit//")
