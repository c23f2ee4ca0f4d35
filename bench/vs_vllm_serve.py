"""Serving against vLLM's own OpenAI server: the same model, prompts and load, one side at a time.

Sides (each a server process of its own on loopback, started and stopped by this script):

  vllm-server    `python -m vllm.entrypoints.openai.api_server` (float32, its CPU KV cache
                 `VLLM_CPU_KVCACHE_SPACE`=--kv-cache-gib), what a user would otherwise deploy;
  alignd-vllm    `alignd serve inference` with ALIGND_ENGINE=vllm (ALIGND_VLLM_KV_CACHE_GIB);
  alignd-torch   `alignd serve inference` with the torch engine (the default).

The load: --clients concurrent streaming clients (/v1/completions, stream: true), each sending
--requests requests of exactly --tokens new tokens (`ignore_eos`, temperature 1, a seed per
request), prompts from the demo task with a few solved problems before them. Reported: tokens/s
(the responses' `usage`: completion tokens over the wall time of the whole load), time to the
first token and inter-token latency (p50/p99), and each alignd side over vLLM's server.

Models (--model): the demo world's tiny Llama, or the large Qwen2 of `trainer.real_world`
(hidden 512, 8 layers, a 16k byte-level BPE vocabulary, about 39M parameters, random weights),
both built by the project's own code and cached.

    python -m bench.vs_vllm_serve --model qwen2-large     # 32 clients x 4 requests x 64 tokens
    python -m bench.vs_vllm_serve --model demo --quick
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bench._harness import (
    ServiceProcess,
    Summary,
    alignd_server,
    fresh_database,
    machine_info,
    print_table,
    ratio,
    scratch_dir,
    supervised_rows,
    wait_healthy,
)
from bench.inference_throughput import MODEL_ID, register

SIDES = ("vllm-server", "alignd-vllm", "alignd-torch")


@dataclass
class Load:
    tokens_per_second: float
    first_token_ms: list[float] = field(default_factory=list)
    inter_token_ms: list[float] = field(default_factory=list)


async def drive(url: str, key: str, prompts: list[str], clients: int, requests: int,
                tokens: int) -> Load:
    """The load on one server: completion tokens from each stream's final `usage`."""
    load = Load(0.0)
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits,
                                 headers={"Authorization": f"Bearer {key}"}) as http:
        async def client(c: int) -> int:
            """One client's requests, one after another; the tokens they generated."""
            generated = 0
            for r in range(requests):
                index = c * requests + r
                body = {"model": MODEL_ID, "prompt": prompts[index % len(prompts)],
                        "max_tokens": tokens, "temperature": 1.0, "seed": index,
                        "ignore_eos": True, "stream": True,
                        "stream_options": {"include_usage": True}}
                generated += await stream(http, body, load)
            return generated

        started = time.perf_counter()
        generated = sum(await asyncio.gather(*(client(c) for c in range(clients))))
        elapsed = time.perf_counter() - started
    load.tokens_per_second = generated / elapsed
    return load


async def stream(http: httpx.AsyncClient, body: dict[str, object], load: Load) -> int:
    """One streamed request; its time to first token and gaps between events go into
    ``load``; returns its completion tokens (the usage chunk)."""
    started = last = time.perf_counter()
    seen_text, used = False, 0
    async with http.stream("POST", "/v1/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            now = time.perf_counter()
            if chunk.get("choices") and chunk["choices"][0].get("text"):
                if seen_text:
                    load.inter_token_ms.append((now - last) * 1000)
                else:
                    load.first_token_ms.append((now - started) * 1000)
                    seen_text = True
                last = now
            if chunk.get("usage"):
                used = int(chunk["usage"]["completion_tokens"])
    return used


@contextmanager
def vllm_server(folder: Path, kv_cache_gib: float, log: Path) -> Iterator[str]:
    """vLLM's own OpenAI server on a free loopback port, serving ``folder`` as MODEL_ID."""
    from services.web import free_port

    port = free_port()
    args = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(folder),
            "--served-model-name", MODEL_ID, "--dtype", "float32", "--port", str(port),
            "--host", "127.0.0.1", "--disable-log-stats"]
    env = {"VLLM_CPU_KVCACHE_SPACE": str(max(1, round(kv_cache_gib)))}  # whole GiB only
    with ServiceProcess(args, env, log) as process:
        url = f"http://127.0.0.1:{port}"
        try:
            wait_healthy(url, timeout=600, alive=process.alive, path="/health")
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}:\n{process.log_tail()}") from exc
        yield url


@contextmanager
def server(side: str, folder: Path, database_url: str, args: argparse.Namespace,
           scratch: Path) -> Iterator[str]:
    if side == "vllm-server":
        with vllm_server(folder, args.kv_cache_gib, scratch / "vllm.log") as url:
            yield url
        return
    env = {"ALIGND_ENVIRONMENT": "test", "ALIGND_DATABASE_URL": database_url,
           "ALIGND_MAX_BATCH_SIZE": str(args.clients), "ALIGND_LOG_LEVEL": "WARNING",
           "ALIGND_ENGINE": side.removeprefix("alignd-"),
           "ALIGND_VLLM_KV_CACHE_GIB": str(args.kv_cache_gib)}
    with alignd_server("inference", env, scratch / f"{side}.log", timeout=600) as url:
        yield url


def bench_folder(model: str) -> Path:
    if model == "demo":
        from trainer.demo_world import build_demo_world, default_demo_root

        return build_demo_world(default_demo_root()).base_model
    from trainer.real_world import build_family_world, default_real_root

    family, _, size = model.partition("-")
    return build_family_world(default_real_root(), family, size=size or "tiny",
                              pretrain_steps=0).base_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=("demo", "qwen2-large"), default="qwen2-large")
    parser.add_argument("--quick", action="store_true", help="1 request per client, 1 repeat")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--requests", type=int, default=None, help="per client (4; quick 1)")
    parser.add_argument("--tokens", type=int, default=64, help="generated per request")
    parser.add_argument("--repeats", type=int, default=None, help="loads per side (2; quick 1)")
    parser.add_argument("--kv-cache-gib", type=float, default=2.0)
    parser.add_argument("--sides", default=",".join(SIDES))
    args = parser.parse_args()
    requests = args.requests or (1 if args.quick else 4)
    repeats = args.repeats or (1 if args.quick else 2)
    folder = bench_folder(args.model)
    print(f"machine: {machine_info()}")
    prompts = [row["prompt"] for row in supervised_rows(args.clients * requests, shots=3)]
    loads: dict[str, list[Load]] = {}
    with scratch_dir("alignd-bench-vllm-") as scratch, fresh_database() as database_url:
        key = register(database_url, folder)
        for side in args.sides.split(","):
            with server(side, folder, database_url, args, scratch) as url:
                asyncio.run(drive(url, key, prompts, args.clients, 1, args.tokens))  # warm-up
                loads[side] = [asyncio.run(drive(url, key, prompts, args.clients, requests,
                                                 args.tokens)) for _ in range(repeats)]
    report(loads, args, requests, repeats)


def report(loads: dict[str, list[Load]], args: argparse.Namespace, requests: int,
           repeats: int) -> None:
    print(f"\n{args.clients} streaming clients x {requests} requests x {args.tokens} tokens "
          f"(ignore_eos), model {args.model}, {repeats} load(s) per side, medians")
    rate = {side: statistics.median(load.tokens_per_second for load in runs)
            for side, runs in loads.items()}
    rows = []
    for side, runs in loads.items():
        first = Summary.of([ms for load in runs for ms in load.first_token_ms])
        gaps = Summary.of([ms for load in runs for ms in load.inter_token_ms])
        rows.append([side, rate[side], first.median, first.p99, gaps.median, gaps.p99])
    print_table(["side", "tokens/s", "TTFT p50 ms", "TTFT p99 ms", "ITL p50 ms", "ITL p99 ms"],
                rows)
    baseline = rate.get("vllm-server")
    for side, tokens_per_second in rate.items():
        if baseline and side != "vllm-server":
            print(f"{side}/vllm-server: tokens/s {ratio(tokens_per_second, baseline):.2f}x")


if __name__ == "__main__":
    main()
