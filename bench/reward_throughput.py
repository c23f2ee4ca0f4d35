"""Reward scoring throughput: alignd's micro-batched /v1/score against a naive server and
against the model's own offline batched forward.

Sides, all in one process with the same torch thread count, on the same reward model (a
4-layer, hidden-256 Llama sequence classifier, num_labels 1) and the same items (demo
arithmetic with few-shot context, about 40-70 tokens each):

  naive    a FastAPI app whose (sync) route tokenizes the one item it gets and runs one forward
           pass per request, in uvicorn under a loopback thread like alignd's;
  alignd   reward_service's app (registry row in a throwaway Postgres database, the model cache,
           the dynamic micro-batcher), under the same kind of thread;
  offline  the limit: every item tokenized up front and scored by the same model in
           length-sorted batches within the same token budget, in-process, no HTTP.

The HTTP sides are driven by `--clients` concurrent clients (httpx.AsyncClient, one event loop)
each sending `--requests` sequential requests of one item. Reported: items/s over the wall time,
per-request latency p50/p99, and the ratios alignd/naive (goal >= 8x) and alignd/offline
(goal >= 0.7). Each side runs once untimed as a warm-up, then `--repeats` times in rotating order;
medians are printed.

    python -m bench.reward_throughput            # 64 clients x 8 requests, 3 repeats
    python -m bench.reward_throughput --quick    # 64 clients x 2 requests, 1 repeat
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import torch

from bench._harness import (
    ServiceProcess,
    Summary,
    fresh_database,
    machine_info,
    print_table,
    ratio,
    save_model,
    scratch_dir,
    supervised_rows,
    wait_healthy,
)
from services.web import free_port

MODEL_ID = "bench-reward"
SMALL = {"hidden_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4,
         "num_key_value_heads": 4, "intermediate_size": 1024}
MAX_BATCH_TOKENS = 8192


@dataclass(frozen=True)
class Run:
    items_per_second: float
    latencies_ms: list[float]


def make_reward_model(scratch: Path) -> Path:
    from transformers import AutoTokenizer, LlamaForSequenceClassification

    base = save_model(scratch / "base", **SMALL)
    out = scratch / "reward"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = LlamaForSequenceClassification.from_pretrained(base, num_labels=1)
    AutoTokenizer.from_pretrained(base).save_pretrained(out)
    model.save_pretrained(out)
    return out


def register(database_url: str, path: Path) -> str:
    """The reward model in a project of its own, and that project's API key (returned)."""
    from services.db.engine import session_factory, session_scope
    from services.db.models import ApiKey, Project
    from services.registry import register_model
    from services.security import generate_key, hash_key

    key = generate_key()
    with session_scope(session_factory(database_url)) as session:
        session.add(Project(id="bench", name="bench"))
        session.flush()
        session.add(ApiKey(id="bench-key", project_id="bench", name="bench",
                           key_hash=hash_key(key), prefix=key[:12]))
        register_model(session, model_id=MODEL_ID, project_id="bench", kind="reward_model",
                       path=str(path), base_model="bench-base", job_id="bench")
    return key


def items(n: int) -> list[dict[str, str]]:
    return [{"prompt": row["prompt"], "response": row["completion"]}
            for row in supervised_rows(n, seed=1, shots=4)]


def naive_app(path: Path) -> Any:
    """What one writes first: a sync route, one forward pass per request."""
    from fastapi import FastAPI
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path).eval()
    app = FastAPI()

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/v1/score")
    def score(body: dict[str, Any]) -> dict[str, Any]:
        data = []
        for i, item in enumerate(body["items"]):
            ids = (tokenizer(item["prompt"])["input_ids"]
                   + tokenizer(item["response"], add_special_tokens=False)["input_ids"]
                   + [tokenizer.eos_token_id])
            with torch.inference_mode():
                value = model(input_ids=torch.tensor([ids])).logits[0, 0].item()
            data.append({"index": i, "score": value})
        return {"object": "list", "data": data}

    return app


def naive_app_from_env() -> Any:
    """uvicorn --factory entry point of the naive server's own process."""
    return naive_app(Path(os.environ["BENCH_REWARD_MODEL"]))


Server = tuple[ServiceProcess, str]


def server_processes(scratch: Path, path: Path, database_url: str) -> tuple[Server, Server]:
    """Each HTTP side in a uvicorn process of its own, so the load generator (this process)
    shares the CPUs with the servers but not a GIL."""
    naive_port, alignd_port = free_port(), free_port()
    naive = ServiceProcess(
        [sys.executable, "-m", "uvicorn", "bench.reward_throughput:naive_app_from_env",
         "--factory", "--host", "127.0.0.1", "--port", str(naive_port), "--log-level", "warning"],
        {"BENCH_REWARD_MODEL": str(path)}, scratch / "naive.log")
    ours = ServiceProcess.alignd(
        ["serve", "reward"],
        {"ALIGND_ENVIRONMENT": "test", "ALIGND_DATABASE_URL": database_url,
         "ALIGND_PORT": str(alignd_port), "ALIGND_MAX_BATCH_TOKENS": str(MAX_BATCH_TOKENS),
         "ALIGND_LOG_LEVEL": "WARNING"}, scratch / "alignd.log")
    return (naive, f"http://127.0.0.1:{naive_port}"), (ours, f"http://127.0.0.1:{alignd_port}")


async def drive(url: str, rows: list[dict[str, str]], clients: int, requests: int,
                key: str) -> Run:
    reward = {"type": "reward_model", "model": MODEL_ID}
    latencies: list[float] = []
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)

    headers = {"Authorization": f"Bearer {key}"}  # the naive server ignores it
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits,
                                 headers=headers) as http:
        async def client(c: int) -> None:
            for r in range(requests):
                item = rows[(c * requests + r) % len(rows)]
                started = time.perf_counter()
                response = await http.post("/v1/score", json={"items": [item], "reward": reward})
                latencies.append((time.perf_counter() - started) * 1000)
                response.raise_for_status()

        started = time.perf_counter()
        await asyncio.gather(*(client(c) for c in range(clients)))
        elapsed = time.perf_counter() - started
    return Run(clients * requests / elapsed, latencies)


def offline(path: Path, rows: list[dict[str, str]]) -> Run:
    """The same model on the same items, batched in-process: the ceiling for the server."""
    from reward_service.batching import MicroBatcher
    from reward_service.encoding import encode_item
    from reward_service.model_cache import load_reward_model
    from reward_service.protocol import ScoreItem

    model = load_reward_model("offline", str(path), {}, 2048, MicroBatcher)
    started = time.perf_counter()
    encoded = [encode_item(model.tokenizer, ScoreItem(**row), model.max_input_tokens).input_ids
               for row in rows]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    batch: list[list[int]] = []
    for i in order:
        if batch and (len(batch) + 1) * len(encoded[i]) > MAX_BATCH_TOKENS:
            model.forward(batch)
            batch = []
        batch.append(encoded[i])
    if batch:
        model.forward(batch)
    elapsed = time.perf_counter() - started
    return Run(len(rows) / elapsed, [])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 requests per client, 1 repeat")
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--requests", type=int, default=None, help="per client (8; quick 2)")
    parser.add_argument("--repeats", type=int, default=None, help="runs per side (3; quick 1)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    requests = args.requests or (2 if args.quick else 8)
    repeats = args.repeats or (1 if args.quick else 3)
    print(f"machine: {machine_info()}")
    with scratch_dir("alignd-bench-reward-") as scratch, fresh_database() as database_url:
        path = make_reward_model(scratch)
        key = register(database_url, path)
        rows = items(args.clients * requests)
        runs: dict[str, list[Run]] = {"naive": [], "alignd": [], "offline": []}
        (naive, naive_url), (ours, ours_url) = server_processes(scratch, path, database_url)
        with naive, ours:
            wait_healthy(naive_url, 120, alive=naive.alive)
            wait_healthy(ours_url, 120, alive=ours.alive)
            sides = {
                "naive": lambda: asyncio.run(drive(naive_url, rows, args.clients, requests,
                                                   key)),
                "alignd": lambda: asyncio.run(drive(ours_url, rows, args.clients, requests,
                                                    key)),
                "offline": lambda: offline(path, rows),
            }
            for side in sides.values():  # warm-up: model load, first-touch allocations
                side()
            names = list(sides)
            for repeat in range(repeats):
                for name in names[repeat % 3:] + names[: repeat % 3]:
                    runs[name].append(sides[name]())
    report(runs, args.clients, requests, rows)


def report(runs: dict[str, list[Run]], clients: int, requests: int,
           rows: list[dict[str, str]]) -> None:
    rate = {name: statistics.median(r.items_per_second for r in side)
            for name, side in runs.items()}
    print(f"\n{clients} clients x {requests} requests of 1 item ({len(rows)} items, "
          f"{len(runs['alignd'])} repeats; torch {torch.get_num_threads()} threads)")
    table = []
    for name, side in runs.items():
        latencies = Summary.of([ms for r in side for ms in r.latencies_ms])
        table.append([name, rate[name], "-" if name == "offline" else latencies.median,
                      "-" if name == "offline" else latencies.p99])
    print_table(["side", "items/s", "p50 ms", "p99 ms"], table)
    print(f"alignd/naive: {ratio(rate['alignd'], rate['naive']):.2f}x (goal >= 8x); "
          f"alignd/offline: {ratio(rate['alignd'], rate['offline']):.2f} (goal >= 0.70)")


if __name__ == "__main__":
    main()
