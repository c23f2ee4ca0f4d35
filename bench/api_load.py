"""api throughput and tail latency for job create and job retrieve under concurrent load.

What it measures: C concurrent keep-alive clients (httpx.AsyncClient in this process) send
requests to one server process on loopback until N requests are done or T seconds pass;
throughput is completed requests per second, latency is per request. Three routes, each
against two servers started side by side (both `uvicorn`, one process, log level warning):

  alignd    `alignd serve api` (its own process) on a throwaway migrated database and an
            empty Redis database; no worker runs, so created jobs just queue.
  baseline  a minimal FastAPI app (`create_baseline_app` below, its own uvicorn process) on
            the same database through the same engine (`services.db.engine.get_engine`):
            create inserts one `jobs` row, retrieve selects one row by primary key. No auth,
            no validation beyond the body's shape, no events, no enqueue, no response model.

  healthz   GET /healthz on both: the floor (HTTP + framework, no database).
  create    POST /v1/fine_tuning/jobs (baseline: POST /jobs) for a valid uploaded file.
  retrieve  GET /v1/fine_tuning/jobs/{id} (baseline: GET /jobs/{id}) over the created ids.

How to read it: `alignd/baseline` throughput < 1 (and p99 > 1) is what alignd's extra work
costs per request: API-key authentication, checks of the model and the file, the job row
plus its status events, the Celery enqueue to Redis, and ORM and pydantic serialization.
Afterwards each app is also driven serially in this process (TestClient, 50 requests per
route): milliseconds per request without the load generator in the way (`alignd/baseline`
> 1 is alignd's extra server time), and its database work per request counted on the
shared engine: SQL statements, commits and rollbacks, and pool checkouts (each one also a
pre-ping round trip). The load generator shares the machine with the server, so
absolute numbers are machine-bound; the ratios are the result.

    python -m bench.api_load                 # 32 clients, <= 3000 requests / 20 s per phase
    python -m bench.api_load --quick         # 16 clients, <= 200 requests / 4 s per phase
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import httpx
from pydantic import BaseModel

from bench._harness import (
    ServiceProcess,
    Summary,
    alignd_app,
    client,
    empty_redis_db,
    fresh_database,
    job_body,
    machine_info,
    new_project_key,
    print_table,
    ratio,
    scratch_dir,
    service_env,
    supervised_rows,
    upload_rows,
    wait_healthy,
)
from services.web import free_port

Request = tuple[str, str, dict[str, Any] | None]
"""(method, path, JSON body or None)."""


# --- the baseline server --------------------------------------------------------------------


class JobIn(BaseModel):
    """The baseline's request body: only the fields it stores."""

    model: str
    training_file: str
    method: dict[str, Any]



def create_baseline_app(database_url: str | None = None, project_id: str | None = None) -> Any:
    """A bare FastAPI app doing the same database work naively. `uvicorn --factory` calls it
    with no arguments: the database and project then come from BENCH_* variables."""
    from fastapi import FastAPI
    from sqlalchemy import Table, insert, select

    from services.db.engine import get_engine
    from services.db.models import Job
    from services.ids import new_id

    engine = get_engine(database_url or os.environ["BENCH_DATABASE_URL"])
    project_id = project_id or os.environ["BENCH_PROJECT_ID"]
    jobs = cast(Table, Job.__table__)
    app = FastAPI()

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/jobs")
    def create(body: JobIn) -> dict[str, Any]:
        job_id = new_id("ftjob")
        with engine.begin() as conn:
            conn.execute(insert(jobs).values(
                id=job_id, project_id=project_id, model=body.model,
                training_file=body.training_file, seed=0, method=body.method, status="queued"))
        return {"id": job_id, "object": "fine_tuning.job", "status": "queued"}

    @app.get("/jobs/{job_id}")
    def retrieve(job_id: str) -> dict[str, Any]:
        with engine.connect() as conn:
            row = conn.execute(select(jobs).where(jobs.c.id == job_id)).mappings().one()
        return dict(row)

    return app


# --- load -----------------------------------------------------------------------------------


@dataclass
class Phase:
    server: str
    route: str
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    elapsed: float = 0.0
    job_ids: list[str] = field(default_factory=list)

    @property
    def throughput(self) -> float:
        return len(self.latencies) / self.elapsed if self.elapsed else float("nan")


async def drive(phase: Phase, base_url: str, headers: dict[str, str],
                next_request: Callable[[], Request], concurrency: int, max_requests: int,
                max_seconds: float) -> Phase:
    """`concurrency` clients send requests back to back until the count or time bound."""
    issued = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=60,
                                 limits=limits) as http:
        deadline = time.perf_counter() + max_seconds

        async def one_client() -> None:
            nonlocal issued
            while issued < max_requests and time.perf_counter() < deadline:
                issued += 1
                method, path, body = next_request()
                started = time.perf_counter()
                response = await http.request(method, path, json=body)
                phase.latencies.append(time.perf_counter() - started)
                if response.status_code >= 400:
                    phase.errors += 1
                elif method == "POST":
                    phase.job_ids.append(response.json()["id"])

        started = time.perf_counter()
        await asyncio.gather(*(one_client() for _ in range(concurrency)))
        phase.elapsed = time.perf_counter() - started
    return phase


@dataclass
class Server:
    name: str
    url: str
    headers: dict[str, str]
    create: Request
    retrieve_path: str
    """With {id} for the job id."""
    build_app: Callable[[], Any]
    """The same app, built again in this process to count its database work."""


def in_process_work(server: Server, database_url: str,
                    samples: int = 50) -> dict[str, dict[str, float]]:
    """Per request, with the app driven serially in this process (TestClient, no load
    generator in the way): milliseconds, and on the shared engine the SQL statements,
    commits and rollbacks, and pool checkouts (each one also a pre-ping round trip)."""
    from fastapi.testclient import TestClient
    from sqlalchemy import event

    from services.db.engine import get_engine

    engine = get_engine(database_url)
    counts = {"statements": 0, "transactions": 0, "checkouts": 0}

    def bump(name: str) -> Callable[..., None]:
        return lambda *args, **kwargs: counts.__setitem__(name, counts[name] + 1)

    listeners = [(engine, "before_cursor_execute", bump("statements")),
                 (engine, "commit", bump("transactions")),
                 (engine, "rollback", bump("transactions")),
                 (engine.pool, "checkout", bump("checkouts"))]
    work: dict[str, dict[str, float]] = {}
    _, create_path, body = server.create
    with TestClient(server.build_app(), headers=server.headers) as http:
        ids = [http.post(create_path, json=body).json()["id"] for _ in range(samples)]
        requests: dict[str, Callable[[int], Any]] = {
            "healthz": lambda i: http.get("/healthz"),
            "create": lambda i: http.post(create_path, json=body),
            "retrieve": lambda i: http.get(server.retrieve_path.format(id=ids[i])),
        }
        for route, send in requests.items():
            for i in range(5):  # warm-up
                send(i).raise_for_status()
            started = time.perf_counter()
            for i in range(samples):
                send(i).raise_for_status()
            milliseconds = (time.perf_counter() - started) / samples * 1000
            for target, name, listener in listeners:
                event.listen(target, name, listener)
            counts.update(dict.fromkeys(counts, 0))
            for i in range(samples):
                send(i).raise_for_status()
            for target, name, listener in listeners:
                event.remove(target, name, listener)
            work[route] = {"ms": milliseconds, **{k: v / samples for k, v in counts.items()}}
    return work


def run_phases(servers: list[Server], concurrency: int, max_requests: int,
               max_seconds: float) -> list[Phase]:
    phases: list[Phase] = []
    warmup = max(20, max_requests // 20)
    for route in ("healthz", "create", "retrieve"):
        for server in servers:
            ids = next((p.job_ids for p in phases
                        if p.server == server.name and p.route == "create"), [])
            next_request = request_maker(server, route, ids)
            asyncio.run(drive(Phase(server.name, route), server.url, server.headers,
                              next_request, concurrency, warmup, max_seconds))
            phase = asyncio.run(drive(Phase(server.name, route), server.url, server.headers,
                                      next_request, concurrency, max_requests, max_seconds))
            phases.append(phase)
            print(f"  {server.name:8} {route:8} {len(phase.latencies):5} requests in "
                  f"{phase.elapsed:5.1f} s, {phase.errors} errors", file=sys.stderr)
    return phases


def request_maker(server: Server, route: str, ids: list[str]) -> Callable[[], Request]:
    if route == "healthz":
        return lambda: ("GET", "/healthz", None)
    if route == "create":
        return lambda: server.create
    rng = random.Random(0)
    return lambda: ("GET", server.retrieve_path.format(id=rng.choice(ids)), None)


# --- setup and report -----------------------------------------------------------------------


def start_servers(database_url: str, redis_url: str, scratch: Path,
                  stack: list[ServiceProcess]) -> list[Server]:
    env = service_env(database_url, redis_url, scratch / "data", scratch / "no-model-needed",
                      ALIGND_HOST="127.0.0.1", ALIGND_PORT=str(free_port()))
    api = ServiceProcess.alignd(["serve", "api"], env, scratch / "api.log").start()
    stack.append(api)
    api_url = f"http://127.0.0.1:{env['ALIGND_PORT']}"
    wait_healthy(api_url, alive=api.alive)
    key = new_project_key(api_url)
    with client(api_url, key) as http:
        training_file = upload_rows(http, supervised_rows(16))
    body = job_body(training_file, max_steps=1)
    port, project_id = free_port(), _project_of_key(database_url, key)
    baseline = ServiceProcess(
        [sys.executable, "-m", "uvicorn", "bench.api_load:create_baseline_app", "--factory",
         "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"],
        {"BENCH_DATABASE_URL": database_url, "BENCH_PROJECT_ID": project_id},
        scratch / "baseline.log").start()
    stack.append(baseline)
    baseline_url = f"http://127.0.0.1:{port}"
    wait_healthy(baseline_url, alive=baseline.alive)
    return [
        Server("baseline", baseline_url, {}, ("POST", "/jobs", body), "/jobs/{id}",
               lambda: create_baseline_app(database_url, project_id)),
        Server("alignd", api_url, {"Authorization": f"Bearer {key}"},
               ("POST", "/v1/fine_tuning/jobs", body), "/v1/fine_tuning/jobs/{id}",
               lambda: alignd_app(env)),
    ]


def _project_of_key(database_url: str, key: str) -> str:
    from sqlalchemy import select

    from services.db.engine import session_factory
    from services.db.models import ApiKey
    from services.security import hash_key

    with session_factory(database_url)() as session:
        return str(session.scalar(select(ApiKey.project_id)
                                  .where(ApiKey.key_hash == hash_key(key))))


def report(phases: list[Phase], work: dict[str, dict[str, dict[str, float]]]) -> None:
    rows = []
    for phase in phases:
        s = Summary.of(phase.latencies)
        rows.append([f"{phase.route} [{phase.server}]", s.n, phase.errors, phase.throughput,
                     s.median * 1000, s.p99 * 1000])
    print_table(["phase", "requests", "errors", "req/s", "p50 ms", "p99 ms"], rows)
    print()
    by_key = {(p.server, p.route): p for p in phases}
    for route in ("healthz", "create", "retrieve"):
        ours, theirs = by_key[("alignd", route)], by_key[("baseline", route)]
        print(f"{route:8} alignd/baseline: throughput "
              f"{ratio(ours.throughput, theirs.throughput):.2f}x, p99 latency "
              f"{ratio(Summary.of(ours.latencies).p99, Summary.of(theirs.latencies).p99):.2f}x")
    print()
    rows = [[f"{route} [{server}]", c["ms"], c["statements"], c["transactions"], c["checkouts"]]
            for route in work["alignd"] for server, c in ((s, work[s][route]) for s in work)]
    print_table(["serial, in-process, per request", "ms", "SQL statements",
                 "commits+rollbacks", "pool checkouts (pre-ping)"], rows)
    print()
    for route in work["alignd"]:
        print(f"{route:8} serial in-process time alignd/baseline: "
              f"{ratio(work['alignd'][route]['ms'], work['baseline'][route]['ms']):.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small bounds (< 60 s)")
    parser.add_argument("--concurrency", type=int, default=None, help="clients (32; quick 16)")
    parser.add_argument("--requests", type=int, default=None,
                        help="requests per phase at most (3000; quick 200)")
    parser.add_argument("--seconds", type=float, default=None,
                        help="seconds per phase at most (20; quick 4)")
    args = parser.parse_args()
    concurrency = args.concurrency or (16 if args.quick else 32)
    max_requests = args.requests or (200 if args.quick else 3000)
    max_seconds = args.seconds or (4.0 if args.quick else 20.0)
    print(f"machine: {machine_info()}; {concurrency} clients, at most {max_requests} requests "
          f"and {max_seconds:g} s per phase\n")
    with scratch_dir("alignd-bench-api-") as scratch, fresh_database() as database_url, \
            empty_redis_db() as redis_url:
        stack: list[ServiceProcess] = []
        try:
            servers = start_servers(database_url, redis_url, scratch, stack)
            phases = run_phases(servers, concurrency, max_requests, max_seconds)
        finally:
            for process in reversed(stack):
                process.stop()
        work = {server.name: in_process_work(server, database_url) for server in servers}
    report(phases, work)


if __name__ == "__main__":
    main()
