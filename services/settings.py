"""Settings for every alignd process: one base class, one subclass per service.

Nothing else in alignd reads os.environ. Values come from `ALIGND_*` environment variables
(or a `.env` file). With no database or broker URL, alignd runs in embedded mode: a real
PostgreSQL from the `pgserver` package and Celery's filesystem transport, both under data_dir.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEVELOPMENT_ADMIN_KEY = "alignd-dev-admin-key"
REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


class AlignSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="ALIGND_", env_file=".env", extra="ignore", env_nested_delimiter="__"
    )

    environment: Literal["development", "test", "production"] = "development"
    """production refuses the development admin key and embedded mode's defaults."""
    data_dir: Path = Field(default_factory=lambda: Path.home() / ".alignd")
    """Embedded database, embedded broker and (by default) artifacts live here."""
    database_url: str | None = None
    """postgresql+psycopg://user:pass@host/db; unset means embedded PostgreSQL in data_dir/postgres."""
    broker_url: str | None = None
    """redis://... or amqp://...; unset means Celery's filesystem transport in data_dir/broker."""
    artifact_root: Path | None = None
    """Content-addressed files, checkpoints and models; defaults to data_dir/artifacts."""
    admin_key: SecretStr = SecretStr(DEVELOPMENT_ADMIN_KEY)
    """Bootstraps projects and API keys (Authorization: Bearer <admin key> on /v1/admin/*)."""
    log_level: str = "INFO"
    log_format: Literal["text", "json"] = "text"
    """text: readable lines; json: one JSON object a line (time, level, logger, message,
    request_id and extra fields), for a log collector."""
    api_url: str = "http://127.0.0.1:8000"
    reward_url: str = "http://127.0.0.1:8001"
    inference_url: str = "http://127.0.0.1:8002"
    key_requests_per_minute: int = Field(default=600, ge=0)
    """Requests a minute one project API key may make to the service (bursts up to that
    many); past it a 429 with Retry-After. 0: no limit. The admin key (alignd's own services
    and the operator) is not limited. The api's default is 600; the reward and inference
    services, called per item and per completion, default to 3,000."""
    rate_limit_url: str | None = None
    """The Redis (redis://, rediss:// or unix://) holding those limits, so that every replica
    and process of a service counts a key's requests together; unset: the broker's Redis when
    ALIGND_BROKER_URL is one, otherwise each process counts its own."""
    metrics_networks: list[str] = ["127.0.0.1/32", "::1/128"]
    """Client addresses (CIDR) that may read /metrics without a key; others need the admin
    key."""
    key_cache_seconds: float = Field(default=5.0, ge=0)
    """How long the reward and inference services trust what they read of an API key. A
    revocation is also published to every replica at once (PostgreSQL NOTIFY); this bounds
    one that a replica missed while its listener reconnected."""
    trusted_proxies: list[str] = []
    """Addresses (or networks, or "*") of the reverse proxies whose X-Forwarded-For names
    the client; from any other peer the header is ignored. None trusted by default."""
    broker_visibility_timeout: int = Field(default=3600, ge=5)
    """Seconds before Redis re-delivers an unacknowledged message (a worker that died)."""

    @model_validator(mode="after")
    def _refuse_unsafe_production(self) -> AlignSettings:
        if self.environment == "production":
            if self.admin_key.get_secret_value() == DEVELOPMENT_ADMIN_KEY:
                raise ValueError("ALIGND_ADMIN_KEY must be set to a secret of your own in production")
            if self.database_url is None or self.broker_url is None:
                raise ValueError(
                    "production needs ALIGND_DATABASE_URL and ALIGND_BROKER_URL; "
                    "embedded mode is for development only"
                )
        return self

    @field_validator("rate_limit_url")
    @classmethod
    def _rate_limit_url_is_redis(cls, url: str | None) -> str | None:
        if url is not None and not url.startswith(REDIS_SCHEMES):
            raise ValueError(f"ALIGND_RATE_LIMIT_URL must be a Redis URL (redis://, rediss:// "
                             f"or unix://), got {url.split(':', 1)[0]!r} as its scheme")
        return url

    @property
    def rate_limit_store(self) -> str | None:
        """The Redis the services' rate limits live in, or None (each process counts)."""
        if self.rate_limit_url is not None:
            return self.rate_limit_url
        if self.broker_url is not None and self.broker_url.startswith(REDIS_SCHEMES):
            return self.broker_url
        return None

    @property
    def embedded(self) -> bool:
        return self.database_url is None

    @cached_property
    def artifacts_dir(self) -> Path:
        return (self.artifact_root or self.data_dir / "artifacts").expanduser()

    @property
    def broker_dir(self) -> Path:
        return self.data_dir.expanduser() / "broker"

    @property
    def postgres_dir(self) -> Path:
        return self.data_dir.expanduser() / "postgres"


class ApiSettings(AlignSettings):
    host: str = "127.0.0.1"
    port: int = 8000
    max_upload_bytes: int = Field(default=512 * 1024 * 1024, ge=1)
    """Uploads past this size are refused with 413."""
    max_concurrent_uploads_per_project: int = Field(default=4, ge=1)
    """Uploads of one project in progress at once (each api process counts its own); the
    next is a 429 with Retry-After before its body is read."""
    base_models: dict[str, str] = Field(default_factory=dict)
    """Base models the operator declares at start-up: {model id: local path or Hugging Face
    hub id}, e.g. ALIGND_BASE_MODELS='{"tiny-llama": "/models/tiny", "qwen":
    "Qwen/Qwen2.5-0.5B"}'. Each checkpoint is checked first; one that fails is logged and
    skipped. A hub id is fetched once (HF_HUB_OFFLINE, HF_HOME, HF_HUB_CACHE apply) into the
    artifact store."""
    allow_remote_code: bool = False
    """Whether a base model whose checkpoint ships Python (`auto_map` in config.json, which
    loading runs: trust_remote_code) may be declared at all; even then the admin API needs
    `"trust_remote_code": true` in the request."""
    job_queue: str = "cpu"
    """Celery queue jobs are sent to (cpu or gpu)."""
    metrics_collect_seconds: float = Field(default=2.0, gt=0)
    """How long a /metrics scrape waits for the job counts (PostgreSQL) and queue depths (the
    broker); past it the scrape answers without them (`alignd_jobs_collect_ok 0`)."""


class WorkerSettings(AlignSettings):
    queues: list[str] = Field(default_factory=lambda: ["cpu"])
    lease_seconds: int = Field(default=60, ge=2)
    """A job whose lease is not renewed for this long is taken to have lost its worker."""
    heartbeat_seconds: float = Field(default=10.0, gt=0)
    sweep_seconds: float = Field(default=15.0, gt=0)
    """How often a worker looks for running jobs whose lease expired and re-enqueues them."""
    requeue_queued_seconds: float = Field(default=600.0, gt=0)
    """A queued job no worker has taken this long after its message was published is
    published again (a broker that lost its messages must not strand jobs)."""
    torch_threads: int | None = None
    metrics_port: int | None = Field(default=None, ge=0, le=65535)
    """The worker's Prometheus /metrics port (a worker has no HTTP server of its own);
    unset or 0: none. Readable from ALIGND_METRICS_NETWORKS, elsewhere with the admin key."""
    metrics_host: str = "127.0.0.1"
    """The address the worker's /metrics listens on (0.0.0.0 in a container)."""
    rollout_engine: Literal["batch", "torch", "vllm"] = "batch"
    """The engine online RL samples from. "batch": each step's rollouts decoded as one static
    batch by a lean Llama decoder over the live weights, the torch engine's tokens for each
    seed at about twice its speed on the demo model on CPU (models the decoder does not
    reproduce exactly go to the torch engine);
    "torch": the torch engine (continuous batching) over the live weights; "vllm": vLLM's, in
    the worker, the new weights pushed into it after each update."""
    rollout_vllm_gpu_memory_utilization: float = Field(default=0.3, gt=0, le=1)
    """The share of the GPU (on CPU, of RAM) the worker's vLLM engine takes for rollouts."""
    rollout_vllm_kv_cache_gib: float | None = Field(default=None, gt=0)
    """The worker's vLLM KV cache in GiB instead (recommended on CPU)."""
    reward_retry_seconds: float = Field(default=300.0, ge=0)
    """How long a job keeps retrying (with backoff) a reward service that is unreachable or
    answers 5xx, e.g. while it restarts, before the job fails."""
    database_retry_seconds: float = Field(default=300.0, ge=0)
    """How long a running job waits out PostgreSQL being unreachable (training on meanwhile;
    metrics, checkpoints and events are recorded once it is back). Past it, the worker leaves
    the job to resume from its last checkpoint when its lease expires."""


class RewardSettings(AlignSettings):
    host: str = "127.0.0.1"
    port: int = 8001
    key_requests_per_minute: int = Field(default=3000, ge=0)
    """As `AlignSettings`'s, for scoring requests."""
    reward_cache_bytes: int = Field(default=2 * 1024**3, ge=1)
    """Bytes of parameters the loaded reward models may take together; the least recently used
    model is dropped past this (a single model larger than the budget is still served)."""
    max_wait_ms: float = Field(default=5.0, ge=0)
    """How long a model's batcher waits for more items once one arrives (0: no waiting)."""
    max_batch_tokens: int = Field(default=8192, ge=1)
    """Padded tokens (rows x longest row) one forward pass may take."""
    require_api_key: bool = True
    """Scoring needs a project's API key (its reward models only), or the admin key from an
    alignd service acting for the project named in X-Alignd-Project."""
    max_input_tokens: int = Field(default=2048, ge=2)
    """Longest (prompt, response) sequence scored; capped further by a model's
    max_position_embeddings. Longer items are truncated (see reward_service.encoding)."""
    torch_threads: int | None = None
    grader_threads: int = Field(default=8, ge=1, le=1024)
    """Gradings (a python grader's sandbox among them) that run at once, on threads of their
    own: the service's own work never waits behind them."""
    grader_threads_per_project: int = Field(default=4, ge=1, le=1024)
    """Of those, at most this many one project's at once."""
    grader_queue: int = Field(default=64, ge=0, le=100_000)
    """A project's grading requests that may wait beyond its running ones; more get a 429
    with Retry-After."""
    python_grader_isolation: Literal["required", "best_effort"] = "required"
    """"required": python graders run only in network, mount and PID namespaces of their own
    (as root, or in a user namespace); where those are refused, every python grading fails
    saying why. "best_effort" runs them anyway with rlimits and an audit hook that refuses
    sockets, which code calling libc through ctypes gets past."""
    python_grader_request_seconds: float = Field(default=120.0, gt=0)
    """Wall-clock seconds a python grader may take over all of one request's items; items
    not begun by then are answered with an error saying so (each item also has its own 5 s)."""
    registry_recheck_seconds: float = Field(default=5.0, ge=0)
    """How long a loaded model is served before its registry row is read again: a model taken
    out of the registry (`DELETE /v1/models/...`) stops scoring within this."""


class InferenceSettings(AlignSettings):
    host: str = "127.0.0.1"
    port: int = 8002
    key_requests_per_minute: int = Field(default=3000, ge=0)
    """As `AlignSettings`'s, for completion requests."""
    engine: Literal["torch", "vllm"] = "torch"
    """torch: transformers with continuous batching (any machine); vllm: vLLM's async engine."""
    max_batch_size: int = Field(default=64, ge=1, le=4096)
    """Sequences one model decodes together (torch engine); more wait for a slot."""
    max_sequences_per_request: int = Field(default=256, ge=1, le=65_536)
    """Completions one request may ask for: its prompts x `n` (or `best_of_n.n`); a request
    past it is a 400 rather than thousands of sequences queued for one client."""
    model_cache_bytes: int = Field(default=8 * 1024**3, ge=1)
    """Bytes of parameters resident models may take together (least recently used dropped)."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    torch_threads: int | None = None
    require_api_key: bool = True
    """Generation needs an api key (a project's models are visible to that project only)."""
    stream_interval: int = Field(default=1, ge=1, le=1024)
    """Tokens per streamed event after the first (vLLM's --stream-interval): 1 sends each
    token as it comes; more cuts the per-event work of many concurrent streams, at the cost of
    choppier streams. Tokens that pile up while a client reads are sent together either way."""
    vllm_gpu_memory_utilization: float = Field(default=0.5, gt=0, le=1)
    """Fraction of GPU memory each vLLM engine takes (on CPU: of RAM, unless the next is set)."""
    vllm_kv_cache_gib: float | None = Field(default=None, gt=0)
    """KV cache per vLLM engine in GiB; set it on CPU, where the fraction would be of all RAM."""
    vllm_max_loaded_models: int = Field(default=2, ge=1)
    """Base models with a running vLLM engine (least recently used shut down first). Each
    engine holds its share of memory for as long as it runs, so this count is the LRU's memory
    bound: with the fraction, max_loaded_models x gpu_memory_utilization must fit in one."""

    @model_validator(mode="after")
    def _vllm_engines_fit(self) -> InferenceSettings:
        share = self.vllm_max_loaded_models * self.vllm_gpu_memory_utilization
        if self.engine == "vllm" and self.vllm_kv_cache_gib is None and share > 1:
            raise ValueError(
                f"ALIGND_VLLM_MAX_LOADED_MODELS ({self.vllm_max_loaded_models}) engines of "
                f"ALIGND_VLLM_GPU_MEMORY_UTILIZATION ({self.vllm_gpu_memory_utilization}) each "
                f"would reserve {share:.0%} of the device's memory; lower either so their "
                "product is at most 1, or set ALIGND_VLLM_KV_CACHE_GIB")
        return self
