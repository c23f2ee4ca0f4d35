"""What the benchmarks share: a throwaway migrated database, an empty Redis database, alignd
services as threads or child processes, projects and keys over the admin API, datasets, and
summary statistics. Everything runs on loopback against the local PostgreSQL and Redis."""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self, TypeVar

import httpx

from services.web import ServerThread

REPO = Path(__file__).resolve().parent.parent
POSTGRES = os.environ.get("ALIGND_BENCH_POSTGRES",
                          "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
REDIS = os.environ.get("ALIGND_BENCH_REDIS", "redis://127.0.0.1:6379")
ADMIN_KEY = "bench-admin-key"
os.environ.setdefault("ALIGND_KEY_REQUESTS_PER_MINUTE", "0")
"""The benchmarks measure throughput, not the per-key rate limits that are on by default: off
in every service they start (threads and child processes alike), unless set otherwise."""
BASE_MODEL_ID = "bench-base"
T = TypeVar("T")


# --- infrastructure -------------------------------------------------------------------------


@contextmanager
def fresh_database(prefix: str = "alignd_bench") -> Iterator[str]:
    """A new PostgreSQL database migrated to head with alignd's Alembic scripts; dropped after."""
    from sqlalchemy import create_engine, text

    from services.db.engine import get_engine
    from services.db.migrate import upgrade

    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin = create_engine(POSTGRES, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"create database {name}"))
    url = POSTGRES.rsplit("/", 1)[0] + f"/{name}"
    try:
        upgrade(url)
        yield url
    finally:
        get_engine(url).dispose()
        with admin.connect() as conn:
            conn.execute(text(f"drop database if exists {name} with (force)"))
        admin.dispose()


@contextmanager
def empty_redis_db() -> Iterator[str]:
    """The URL of a Redis database (0..15) that holds no keys now; flushed afterwards.

    The test suite takes databases 1..15 by pid, so 0 is tried first.
    """
    import redis

    for db in range(16):
        client = redis.Redis.from_url(f"{REDIS}/{db}")
        if client.dbsize() == 0:
            break
    else:
        raise RuntimeError("every Redis database holds keys; set ALIGND_BENCH_REDIS elsewhere")
    try:
        yield f"{REDIS}/{db}"
    finally:
        client.flushdb()
        client.close()


def service_env(database_url: str, broker_url: str | None, data_dir: Path,
                base_model_path: Path | str, **extra: str) -> dict[str, str]:
    """ALIGND_* variables for every alignd process of a benchmark; broker_url None is the
    embedded (filesystem) broker under data_dir/broker."""
    env = {
        "ALIGND_ENVIRONMENT": "test",
        "ALIGND_DATABASE_URL": database_url,
        "ALIGND_DATA_DIR": str(data_dir),
        "ALIGND_ARTIFACT_ROOT": str(data_dir / "artifacts"),
        "ALIGND_ADMIN_KEY": ADMIN_KEY,
        "ALIGND_BASE_MODELS": json.dumps({BASE_MODEL_ID: str(base_model_path)}),
        "ALIGND_LOG_LEVEL": "WARNING",
        **extra,
    }
    if broker_url is not None:
        env["ALIGND_BROKER_URL"] = broker_url
    return env


def wait_for(predicate: Callable[[], T | None], timeout: float, interval: float = 0.05,
             what: str = "condition") -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


def wait_healthy(url: str, timeout: float = 60.0,
                 alive: Callable[[], bool] = lambda: True, path: str = "/healthz") -> None:
    def healthy() -> bool:
        if not alive():
            raise RuntimeError(f"the server behind {url} exited")
        try:
            return httpx.get(f"{url}{path}", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(healthy, timeout, interval=0.1, what=f"{url}{path}")


# --- alignd processes -----------------------------------------------------------------------


def api_thread(env: dict[str, str]) -> ServerThread:
    """alignd's api (create_app) under uvicorn in a thread of this process."""
    return ServerThread(alignd_app(env))


def alignd_app(env: dict[str, str]) -> Any:
    """alignd's api app (`create_app`) configured by `env`'s ALIGND_* values alone, passed
    explicitly so this process's own environment cannot leak in (a missing broker URL stays
    None: the embedded broker)."""
    from api.main import create_app
    from services.settings import ApiSettings

    kwargs: dict[str, Any] = {k.removeprefix("ALIGND_").lower(): v for k, v in env.items()
                              if k.startswith("ALIGND_")}
    kwargs["base_models"] = json.loads(kwargs.get("base_models", "{}"))
    kwargs.setdefault("broker_url", None)
    return create_app(ApiSettings(_env_file=None, **kwargs))  # type: ignore[call-arg]


class ServiceProcess:
    """A child process run from the repository root (`python -m ...`), logging to a file."""

    def __init__(self, args: Sequence[str], env: dict[str, str], log_path: Path):
        self.args, self.log_path = list(args), log_path
        # Only our ALIGND_* values: none of the caller's may leak into the child.
        base = {k: v for k, v in os.environ.items() if not k.startswith("ALIGND_")}
        self.env = {**base, **env}
        self.process: subprocess.Popen[bytes] | None = None

    @classmethod
    def alignd(cls, verb: Sequence[str], env: dict[str, str], log_path: Path) -> ServiceProcess:
        return cls([sys.executable, "-m", "cli.main", *verb], env, log_path)

    def start(self) -> Self:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(self.args, env=self.env, cwd=REPO, stdout=log,
                                        stderr=subprocess.STDOUT)
        return self

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextmanager
def alignd_server(service: str, env: dict[str, str], log_path: Path,
                  timeout: float = 120.0) -> Iterator[str]:
    """`alignd serve <service>` in a process of its own (as deployed) on a free loopback port,
    with ``env`` as its only ALIGND_* settings; yields its URL once it answers /healthz."""
    from services.web import free_port

    port = free_port()
    with ServiceProcess.alignd(["serve", service], {**env, "ALIGND_PORT": str(port)},
                               log_path) as process:
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url, timeout, alive=process.alive)
        yield url


def wait_worker_ready(worker: ServiceProcess, timeout: float = 120.0) -> None:
    """Until Celery logs that the worker is ready (it logs that at WARNING level too)."""
    def ready() -> bool:
        if not worker.alive():
            raise RuntimeError(f"the worker exited:\n{worker.log_tail()}")
        return "ready." in worker.log_tail(20000)

    wait_for(ready, timeout, interval=0.1, what="the worker to be ready")


# --- the api as a client sees it ------------------------------------------------------------


def new_project_key(api_url: str) -> str:
    """A fresh project and an API key for it, made over the admin API."""
    with httpx.Client(base_url=api_url, timeout=30,
                      headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as admin:
        project = admin.post("/v1/admin/projects", json={"name": f"bench-{uuid.uuid4().hex[:8]}"})
        project.raise_for_status()
        key = admin.post(f"/v1/admin/projects/{project.json()['id']}/api_keys",
                         json={"name": "bench"})
        key.raise_for_status()
        return str(key.json()["key"])


def client(api_url: str, key: str) -> httpx.Client:
    return httpx.Client(base_url=api_url, timeout=60, headers={"Authorization": f"Bearer {key}"})


def upload_rows(http: httpx.Client, rows: list[dict[str, Any]],
                purpose: str = "supervised") -> str:
    content = "".join(json.dumps(row) + "\n" for row in rows).encode()
    response = http.post("/v1/files", data={"purpose": purpose},
                         files={"file": ("train.jsonl", content, "application/jsonl")})
    response.raise_for_status()
    return str(response.json()["id"])


def job_body(training_file: str, **hyperparameters: Any) -> dict[str, Any]:
    return {"model": BASE_MODEL_ID, "training_file": training_file, "seed": 0,
            "method": {"type": "supervised",
                       "supervised": {"hyperparameters": hyperparameters}}}


# --- data and models ------------------------------------------------------------------------


def supervised_rows(n: int, seed: int = 0, shots: int = 0) -> list[dict[str, str]]:
    """Demo arithmetic rows {"prompt", "completion"}. shots > 0 prefixes each prompt with that
    many solved problems ("12+34=46 ..."), which makes sequences about 9 * (shots + 1) tokens."""
    from trainer.demo_world.task import make_problems

    problems = make_problems(n * (shots + 1), seed)
    rows = []
    for i in range(n):
        group = problems[i * (shots + 1):(i + 1) * (shots + 1)]
        context = " ".join(p.prompt + p.answer for p in group[:-1])
        prompt = (context + " " if context else "") + group[-1].prompt
        rows.append({"prompt": prompt, "completion": group[-1].answer})
    return rows


def save_model(path: Path, **overrides: Any) -> Path:
    """The demo tokenizer and a random Llama (demo defaults unless overridden) in `path`."""
    from transformers.utils import logging as hf_logging

    from trainer.demo_world.model import build_model, save_random_base_model
    from trainer.demo_world.tokenizer import build_tokenizer

    hf_logging.disable_progress_bar()
    if not overrides:
        return save_random_base_model(path, seed=0)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer()
    tokenizer.save_pretrained(path)
    build_model(tokenizer, seed=0, **overrides).save_pretrained(path)
    return path


@contextmanager
def scratch_dir(prefix: str) -> Iterator[Path]:
    import tempfile

    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


# --- statistics and printing ----------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation between closest ranks."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass(frozen=True)
class Summary:
    n: int
    median: float
    p95: float
    p99: float
    mean: float
    minimum: float
    maximum: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Summary:
        return cls(n=len(values), median=percentile(values, 50), p95=percentile(values, 95),
                   p99=percentile(values, 99),
                   mean=sum(values) / len(values) if values else float("nan"),
                   minimum=min(values, default=float("nan")),
                   maximum=max(values, default=float("nan")))


def ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else float("nan")


def print_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)))
    for row in cells:
        print("  ".join(c.rjust(w) if i else c.ljust(w)
                        for i, (c, w) in enumerate(zip(row, widths, strict=True))))


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def machine_info() -> str:
    """nproc, memory, load average, Python and (if installed) torch versions."""
    memory = ""
    try:
        with open("/proc/meminfo") as meminfo:
            kib = int(meminfo.readline().split()[1])
        memory = f", {kib / 2**20:.1f} GiB RAM"
    except (OSError, ValueError, IndexError):
        pass
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    parts = [f"{os.cpu_count()} CPUs{memory}", f"load average {load}",
             f"Python {platform.python_version()}"]
    try:
        import torch

        parts.append(f"torch {torch.__version__} ({torch.get_num_threads()} threads)")
    except ImportError:
        pass
    return ", ".join(parts)
