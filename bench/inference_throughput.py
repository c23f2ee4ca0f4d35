"""Serving overhead: tokens/s of alignd's inference service under concurrent streaming clients
against the engine's own offline generation of the same prompts, in one run.

Sides, on the same model (a random 4-layer, hidden-256 Llama with the demo tokenizer, or the
demo model with --tiny) and the same prompts (demo arithmetic with few-shot context), each
generating exactly --tokens tokens per prompt (`ignore_eos`), sampling at temperature 1:

  alignd   `alignd serve inference` (torch engine) in a process of its own, registry row in a
           throwaway Postgres database, driven over HTTP by --clients concurrent streaming clients
           (/v1/completions, stream: true), each sending --requests sequential requests;
  engine   a diagnosis: the same torch engine in a child process, no HTTP, the same requests
           with --clients of them in flight at a time;
  offline  the limit: transformers' batched `model.generate` on the same prompts, --clients
           prompts per batch (left-padded), in this process, no HTTP.

Reported: generated tokens/s over the wall time, time to first token and request latency
(p50/p99), alignd/offline (goal >= 0.90) and engine/offline. Each side runs once untimed as a warm-up, then
--repeats times alternating; medians are printed.

    python -m bench.inference_throughput            # 32 clients x 4 requests x 64 tokens, 3 repeats
    python -m bench.inference_throughput --quick    # 32 clients x 1 request, 1 repeat
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import json
import multiprocessing
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import torch

from bench._harness import (
    Summary,
    alignd_server,
    fresh_database,
    machine_info,
    print_table,
    ratio,
    save_model,
    scratch_dir,
    supervised_rows,
)

MODEL_ID = "bench-generator"
SMALL = {"hidden_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4,
         "num_key_value_heads": 4, "intermediate_size": 1024}


@dataclass
class Run:
    tokens_per_second: float
    first_token_ms: list[float] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)


def register(database_url: str, path: Path) -> str:
    """The model as a base model, a project and its API key; returns the key."""
    from services.db.engine import session_factory, session_scope
    from services.db.models import ApiKey, Project
    from services.registry import declare_base_models
    from services.security import generate_key, hash_key

    key = generate_key()
    with session_scope(session_factory(database_url)) as session:
        declare_base_models(session, {MODEL_ID: str(path)})
        session.add(Project(id="bench", name="bench"))
        session.flush()
        session.add(ApiKey(id="bench-key", project_id="bench", name="bench",
                           key_hash=hash_key(key), prefix=key[:12]))
    return key


async def drive(url: str, key: str, prompts: list[str], clients: int, requests: int,
                tokens: int) -> Run:
    first: list[float] = []
    latencies: list[float] = []
    generated = 0
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    headers = {"Authorization": f"Bearer {key}"}

    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits,
                                 headers=headers) as http:
        async def client(c: int) -> None:
            nonlocal generated
            for r in range(requests):
                index = c * requests + r
                body = {"model": MODEL_ID, "prompt": prompts[index % len(prompts)],
                        "max_tokens": tokens, "temperature": 1.0, "seed": index,
                        "ignore_eos": True, "stream": True}
                started = time.perf_counter()
                seen_first = False
                async with http.stream("POST", "/v1/completions", json=body) as response:
                    response.raise_for_status()
                    async for line in response.aiter_lines():
                        if not line.startswith("data: {"):
                            continue
                        if not seen_first:
                            first.append((time.perf_counter() - started) * 1000)
                            seen_first = True
                        choice = json.loads(line[6:])["choices"][0]
                        if choice["finish_reason"] is not None:
                            break
                latencies.append((time.perf_counter() - started) * 1000)
                generated += tokens

        started = time.perf_counter()
        await asyncio.gather(*(client(c) for c in range(clients)))
        elapsed = time.perf_counter() - started
    return Run(generated / elapsed, first, latencies)


async def engine_only(database_url: str, path: Path, prompts: list[str], clients: int,
                      tokens: int) -> Run:
    """alignd's torch engine in this process, no HTTP: --clients concurrent `generate` calls at
    a time, the same requests as the clients send (a diagnosis: engine vs serving overhead)."""
    from transformers import AutoTokenizer

    from inference.catalog import ModelCatalog
    from inference.engines.base import GenerationRequest, SamplingOptions
    from inference.engines.torch_engine import TorchEngine
    from services.db.engine import session_factory

    tokenizer = AutoTokenizer.from_pretrained(path)
    engine = TorchEngine(ModelCatalog(session_factory(database_url)), max_batch_size=clients,
                         device="cpu")
    slots = asyncio.Semaphore(clients)

    async def one(index: int) -> None:
        options = SamplingOptions(max_tokens=tokens, temperature=1.0, seed=index, ignore_eos=True)
        request = GenerationRequest(request_id=str(index), model=MODEL_ID, options=options,
                                    prompt_ids=tokenizer(prompts[index])["input_ids"])
        async with slots:
            async for _ in engine.generate(request):
                pass

    await one(0)  # the model loaded before the clock starts
    started = time.perf_counter()
    await asyncio.gather(*(one(index) for index in range(len(prompts))))
    elapsed = time.perf_counter() - started
    await engine.close()
    return Run(len(prompts) * tokens / elapsed)


def engine_side(database_url: str, path: Path, prompts: list[str], clients: int, tokens: int,
                threads: int) -> Run:
    torch.set_num_threads(threads)
    return asyncio.run(engine_only(database_url, path, prompts, clients, tokens))


def in_child(function: Callable[..., Run], *args: Any) -> Run:
    """``function(*args)`` in a fresh process: a process whose main thread has run torch
    (the offline side) slows a second thread's torch work by about a third here (measured:
    4,200 tokens/s for the engine before this process's first `generate`, 2,950 after)."""
    with concurrent.futures.ProcessPoolExecutor(
            1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(function, *args).result()


def offline(path: Path, prompts: list[str], batch_size: int, tokens: int) -> Run:
    """transformers' batched generate on the same prompts: the engine's own offline speed."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    started = time.perf_counter()
    for start in range(0, len(prompts), batch_size):
        batch = tokenizer(prompts[start:start + batch_size], return_tensors="pt", padding=True,
                          padding_side="left")
        with torch.inference_mode():
            model.generate(**batch, do_sample=True, temperature=1.0, top_k=0,
                           max_new_tokens=tokens, min_new_tokens=tokens)
    elapsed = time.perf_counter() - started
    return Run(len(prompts) * tokens / elapsed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 request per client, 1 repeat")
    parser.add_argument("--tiny", action="store_true", help="the demo-sized model")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--requests", type=int, default=None, help="per client (4; quick 1)")
    parser.add_argument("--tokens", type=int, default=64, help="generated per request")
    parser.add_argument("--repeats", type=int, default=None, help="runs per side (3; quick 1)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads, both sides")
    parser.add_argument("--server-threads", type=int, default=None,
                        help="the server's ALIGND_TORCH_THREADS (default: --threads)")
    parser.add_argument("--stream-interval", type=int, default=1,
                        help="the server's ALIGND_STREAM_INTERVAL (tokens per event)")
    args = parser.parse_args()
    threads = args.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    requests = args.requests or (1 if args.quick else 4)
    repeats = args.repeats or (1 if args.quick else 3)
    print(f"machine: {machine_info()}")
    with scratch_dir("alignd-bench-inference-") as scratch, fresh_database() as database_url:
        path = save_model(scratch / "model", **({} if args.tiny else SMALL))
        key = register(database_url, path)
        prompts = [row["prompt"] for row in supervised_rows(args.clients * requests, shots=3)]
        env = {"ALIGND_ENVIRONMENT": "test", "ALIGND_DATABASE_URL": database_url,
               "ALIGND_TORCH_THREADS": str(args.server_threads or threads),
               "ALIGND_MAX_BATCH_SIZE": str(args.clients), "ALIGND_LOG_LEVEL": "WARNING",
               "ALIGND_STREAM_INTERVAL": str(args.stream_interval)}
        runs: dict[str, list[Run]] = {"alignd": [], "engine": [], "offline": []}
        with alignd_server("inference", env, scratch / "inference.log") as url:
            sides = {
                "alignd": lambda: asyncio.run(drive(url, key, prompts, args.clients, requests,
                                                    args.tokens)),
                "engine": lambda: in_child(engine_side, database_url, path, prompts,
                                           args.clients, args.tokens, threads),
                "offline": lambda: offline(path, prompts, args.clients, args.tokens),
            }
            for side in sides.values():  # warm-up: model load, first-touch allocations
                side()
            for repeat in range(repeats):
                order = ["alignd", "engine", "offline"]
                for name in (order if repeat % 2 == 0 else order[::-1]):
                    runs[name].append(sides[name]())
    report(runs, args, requests, threads)


def report(runs: dict[str, list[Run]], args: argparse.Namespace, requests: int,
           threads: int) -> None:
    rate = {name: statistics.median(r.tokens_per_second for r in side)
            for name, side in runs.items()}
    print(f"\n{args.clients} streaming clients x {requests} requests x {args.tokens} tokens "
          f"({len(runs['alignd'])} repeats; torch {threads} threads; "
          f"model {'demo tiny' if args.tiny else '4-layer hidden-256'}; "
          f"stream interval {args.stream_interval})")
    table = []
    for name, side in runs.items():
        first = Summary.of([ms for r in side for ms in r.first_token_ms])
        total = Summary.of([ms for r in side for ms in r.latencies_ms])
        table.append([name, rate[name], *(("-",) * 4 if name != "alignd" else
                                          (first.median, first.p99, total.median, total.p99))])
    print_table(["side", "tokens/s", "TTFT p50 ms", "TTFT p99 ms", "p50 ms", "p99 ms"], table)
    print(f"alignd/offline: {ratio(rate['alignd'], rate['offline']):.2f} (goal >= 0.90); "
          f"engine/offline: {ratio(rate['engine'], rate['offline']):.2f} (no HTTP)")


if __name__ == "__main__":
    main()
