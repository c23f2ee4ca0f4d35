"""How often an API key may call a service: a token bucket per key, in Redis where the service
has one (every replica and process of the service draws from the same bucket), in the process
otherwise.

A Redis that does not answer never takes a service down: its requests are counted by the
process's own buckets meanwhile, and the log says so (once a minute at most, not per request).
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from urllib.parse import urlsplit

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from services.errors import TooManyRequests
from services.settings import AlignSettings

log = logging.getLogger(__name__)

LOCAL_BUCKETS = 10_000
"""Keys a process remembers buckets for; past it they are all forgotten (full again)."""
REDIS_TIMEOUT_SECONDS = 0.25
"""How long a request waits for Redis (connecting, or the script's answer) before it is
counted in the process instead."""
REDIS_RETRY_SECONDS = 5.0
"""After Redis failed to answer, how long requests go straight to the process's buckets."""
WARN_EVERY_SECONDS = 60.0
"""The least time between two warnings that Redis is not answering."""

TAKE_TOKEN = """
-- One token from the bucket KEYS[1], which holds ARGV[1] tokens and refills at ARGV[1] a
-- minute; 0 when taken, else the seconds until a token is there. The hash keeps the tokens left
-- and when they were counted (ms, by Redis's clock, so replicas on skewed hosts agree).
local capacity = tonumber(ARGV[1])
local per_ms = capacity / 60000
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local bucket = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens, at = tonumber(bucket[1]), tonumber(bucket[2])
if tokens == nil or at == nil then
  tokens, at = capacity, now
end
tokens = math.min(capacity, tokens + math.max(0, now - at) * per_ms)
if tokens < 1 then
  return math.ceil((1 - tokens) / per_ms / 1000)
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens - 1), 'at', tostring(now))
-- An untouched bucket is full again within a minute: forgetting it then changes nothing.
redis.call('PEXPIRE', KEYS[1], 60000)
return 0
"""


class LocalBuckets:
    """Token buckets in this process, one per key."""

    def __init__(self, per_minute: int) -> None:
        self.per_minute = per_minute
        self._buckets: dict[str, tuple[float, float]] = {}
        """key id → (tokens left, when they were counted)."""
        self._lock = threading.Lock()  # the api's routes run on worker threads

    def take(self, key_id: str) -> int:
        """Take a token for ``key_id``: 0, or the seconds until one is there."""
        rate = self.per_minute / 60.0  # tokens a second
        with self._lock:
            now = time.monotonic()
            tokens, then = self._buckets.get(key_id, (float(self.per_minute), now))
            tokens = min(float(self.per_minute), tokens + (now - then) * rate)
            if tokens < 1.0:
                self._buckets[key_id] = (tokens, now)
                return math.ceil((1.0 - tokens) / rate)
            if len(self._buckets) >= LOCAL_BUCKETS:
                self._buckets.clear()
            self._buckets[key_id] = (tokens - 1.0, now)
            return 0


class RedisBuckets:
    """Token buckets in Redis, one hash per key under ``alignd:rate:<scope>:``, each taken from
    atomically by one Lua script (`TAKE_TOKEN`)."""

    def __init__(self, url: str, scope: str, per_minute: int) -> None:
        self.per_minute, self.prefix = per_minute, f"alignd:rate:{scope}:"
        self.where = _server(url)
        # No retries: a request that finds Redis gone is counted here at once.
        self._client = redis.Redis.from_url(
            url, socket_connect_timeout=REDIS_TIMEOUT_SECONDS,
            socket_timeout=REDIS_TIMEOUT_SECONDS, retry=Retry(NoBackoff(), 0))
        self._script = self._client.register_script(TAKE_TOKEN)
        self._lock = threading.Lock()
        self._skip_until = 0.0
        self._missed = 0
        """Requests counted in the process since Redis last answered."""
        self._warned_at = -math.inf

    def take(self, key_id: str) -> int | None:
        """Take a token for ``key_id``: 0, the seconds until one is there, or None when Redis
        did not answer (the caller counts the request itself)."""
        if time.monotonic() < self._skip_until:
            self._missed += 1
            return None
        try:
            wait = int(self._script(keys=[self.prefix + key_id], args=[self.per_minute]))
        except (redis.RedisError, OSError) as exc:
            self._lost(exc)
            return None
        if self._missed:
            self._answered()
        return wait

    def _lost(self, exc: BaseException) -> None:
        with self._lock:
            now = time.monotonic()
            self._skip_until = now + REDIS_RETRY_SECONDS
            self._missed += 1
            if now - self._warned_at < WARN_EVERY_SECONDS:
                return
            self._warned_at = now
        log.warning("rate limits are counted in this process only: Redis at %s did not answer "
                    "(%s: %s); %d requests counted here so far, Redis tried again every %.0f s",
                    self.where, type(exc).__name__, exc, self._missed, REDIS_RETRY_SECONDS)

    def _answered(self) -> None:
        with self._lock:
            missed, self._missed = self._missed, 0
            self._warned_at = -math.inf
        if missed:
            log.info("Redis at %s answers again; rate limits are shared again (%d requests "
                     "were counted in this process meanwhile)", self.where, missed)


class RateLimiter:
    """At most `per_minute` requests a minute per key, in bursts of up to `per_minute`. With
    `redis_url` every process made with the same `scope` (a service's replicas) shares one
    bucket per key; without it, or while that Redis does not answer, each process counts its
    own. 0 turns it off."""

    def __init__(self, per_minute: int, *, redis_url: str | None = None,
                 scope: str = "alignd") -> None:
        self.per_minute = per_minute
        self._local = LocalBuckets(per_minute)
        self.shared = (RedisBuckets(redis_url, scope, per_minute)
                       if redis_url and per_minute > 0 else None)

    @classmethod
    def for_service(cls, settings: AlignSettings, service: str) -> RateLimiter:
        """The limiter of ``service`` (api, reward, inference), shared through
        `settings.rate_limit_store` where there is one."""
        return cls(settings.key_requests_per_minute, redis_url=settings.rate_limit_store,
                   scope=service)

    def admit(self, key_id: str) -> None:
        """Take a token for ``key_id``, or TooManyRequests saying when one will be there."""
        if self.per_minute <= 0:
            return
        wait = self.shared.take(key_id) if self.shared is not None else None
        if wait is None:
            wait = self._local.take(key_id)
        if wait > 0:
            raise TooManyRequests(
                f"this API key made more than {self.per_minute} requests a minute; retry "
                f"in {wait} s", retry_after=wait, code="rate_limited")

    async def admit_async(self, key_id: str) -> None:
        """`admit` for a route on the event loop: a Redis round trip waits on a worker thread,
        never on the loop."""
        if self.shared is None:
            self.admit(key_id)
        else:
            await asyncio.to_thread(self.admit, key_id)


def _server(url: str) -> str:
    """Where ``url`` points, without its credentials (for the log)."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return parts.path
    return f"{parts.hostname}:{parts.port or 6379}"
