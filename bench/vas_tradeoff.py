"""Value Augmented Sampling against best-of-N on the demo task: reward, accuracy, wall time.

One run builds (or reuses) the demo world, then, as a user of alignd would:
  1. trains a reward model on the demo's preference pairs (the `reward_model` method) — the
     proxy reward, as in the VAS paper; the gold reward is the task's own grader;
  2. trains a VAS value model on completions of the demo's prompts sampled from the frozen base
     and scored with that reward model (the `value_model` method, TD(λ));
  3. serves the base through alignd's inference service (torch engine) and reward service, each
     in a process of its own on loopback (as deployed), and generates for the held-out prompts
     with
       VAS at several betas (top_k 20; beta 0 is plain top-k sampling), and
       best-of-N for N = 1, 4, 16, 64 (same sampling, scored by the reward model over HTTP),
     --concurrency requests in flight.
Reported per configuration: wall time, gold accuracy (exact answer), mean proxy reward of the
returned completion, and generated tokens/s; then VAS throughput against plain sampling and
whether a beta reaches best-of-16's gold accuracy and proxy reward within 1/4 of its time.

    python -m bench.vas_tradeoff            # 200 held-out prompts
    python -m bench.vas_tradeoff --quick    # 48 prompts, betas 0 and 4, N up to 16
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from bench._harness import (
    alignd_server,
    fresh_database,
    machine_info,
    print_table,
    ratio,
    scratch_dir,
)

BASE_ID = "alignd-demo-tiny"
RM_ID, VALUE_ID = "bench-demo-rm", "bench-demo-value"
TOP_K, MAX_TOKENS = 20, 8


@dataclass
class Outcome:
    name: str
    seconds: float
    accuracy: float
    proxy_reward: float
    completion_tokens: int


def train(method: str, world_base: Path, rows: list[dict[str, Any]], hp: Any, out: Path,
          **context: Any) -> Path:
    from trainer.context import TrainingContext
    from trainer.methods import METHODS

    ctx = TrainingContext(job_id=f"bench-{method}", base_model_path=world_base,
                          training_rows=rows, validation_rows=None, hyperparameters=hp, seed=0,
                          output_dir=out / "model", checkpoint_root=out / "checkpoints",
                          log=lambda message: print(f"  [{method}] {message}"), **context)
    started = time.perf_counter()
    result = METHODS[method](ctx)
    print(f"  [{method}] trained in {time.perf_counter() - started:.0f} s; "
          f"final metrics {({k: round(v, 4) for k, v in result.final_metrics.items()})}")
    return Path(result.output_dir)


def register(database_url: str, base: Path, rm: Path | None, value: Path | None) -> None:
    from services.db.engine import session_factory, session_scope
    from services.db.models import Project
    from services.registry import declare_base_models, register_model

    with session_scope(session_factory(database_url)) as session:
        declare_base_models(session, {BASE_ID: str(base)})
        if session.get(Project, "bench") is None:
            session.add(Project(id="bench", name="bench"))
            session.flush()
        for model_id, kind, path in ((RM_ID, "reward_model", rm),
                                     (VALUE_ID, "value_model", value)):
            if path is not None:
                register_model(session, model_id=model_id, project_id="bench", kind=kind,
                               path=str(path), base_model=BASE_ID, job_id="bench")


async def generate(url: str, rows: list[dict[str, Any]], extra: dict[str, Any],
                   concurrency: int) -> tuple[list[str], float, int]:
    limit = asyncio.Semaphore(concurrency)
    texts: list[str] = [""] * len(rows)
    tokens = 0
    async with httpx.AsyncClient(base_url=url, timeout=600) as http:
        async def one(i: int) -> None:
            nonlocal tokens
            body = {"model": BASE_ID, "prompt": rows[i]["prompt"], "max_tokens": MAX_TOKENS,
                    "temperature": 1.0, "top_k": TOP_K, "seed": i, **extra}
            if "best_of_n" in body:
                body["best_of_n"] = {**body["best_of_n"], "item": {"answer": rows[i]["answer"]}}
            async with limit:
                response = await http.post("/v1/completions", json=body)
            response.raise_for_status()
            texts[i] = response.json()["choices"][0]["text"]
            tokens += response.json()["usage"]["completion_tokens"]

        started = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(len(rows))))
    return texts, time.perf_counter() - started, tokens


def proxy_rewards(reward_url: str, rows: list[dict[str, Any]], texts: list[str]) -> list[float]:
    items = [{"prompt": r["prompt"], "response": t} for r, t in zip(rows, texts)]
    response = httpx.post(f"{reward_url}/v1/score", timeout=600, json={
        "items": items, "reward": {"type": "reward_model", "model": RM_ID}})
    response.raise_for_status()
    return [float(row["score"]) for row in response.json()["data"]]


def main() -> None:
    from services.methods import RewardModelHyperparameters, ValueModelHyperparameters
    from trainer.demo_world import build_demo_world, default_demo_root
    from trainer.demo_world.datasets import read_jsonl

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3,
                        help="runs of each configuration; the median wall time is reported")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads of each service (default: half the CPUs each, so "
                             "the reward and inference services do not spin on each other's "
                             "cores: with 2 each on 2 CPUs best-of-16 took 2.8x as long)")
    parser.add_argument("--samples-per-prompt", type=int, default=4,
                        help="completions per prompt the value model is trained on")
    parser.add_argument("--value-epochs", type=int, default=2)
    parser.add_argument("--reward-head", choices=["classifier", "implicit"], default="classifier",
                        help="the proxy reward model's head (the implicit one is ~96%% accurate "
                             "on held-out pairs, the classifier ~77%%)")
    args = parser.parse_args()
    service_threads = args.threads or max(1, (os.cpu_count() or 2) // 2)
    betas = [0.0, 4.0] if args.quick else [0.0, 1.0, 2.0, 4.0, 8.0]
    sizes = [1, 4, 16] if args.quick else [1, 4, 16, 64]
    print(f"machine: {machine_info()}")
    world = build_demo_world(default_demo_root())
    eval_rows = read_jsonl(world.eval_prompts)[: 48 if args.quick else 200]
    with scratch_dir("alignd-bench-vas-") as scratch, fresh_database() as database_url:
        rm_hp = (RewardModelHyperparameters(n_epochs=2, batch_size=16, learning_rate=1e-4,
                                            checkpoint_every=10_000, eval_every=10_000)
                 if args.reward_head == "classifier" else
                 RewardModelHyperparameters(head="implicit", n_epochs=3, batch_size=32,
                                            learning_rate=3e-4, max_seq_length=64,
                                            checkpoint_every=10_000, eval_every=10_000))
        rm = train("reward_model", world.base_model, read_jsonl(world.preference), rm_hp,
                   scratch / "rm")
        register(database_url, world.base_model, rm, None)
        env = {"ALIGND_ENVIRONMENT": "test", "ALIGND_DATABASE_URL": database_url,
               "ALIGND_REQUIRE_API_KEY": "false", "ALIGND_LOG_LEVEL": "WARNING",
               "ALIGND_TORCH_THREADS": str(service_threads)}
        with alignd_server("reward", env, scratch / "reward.log") as reward_url:
            value_hp = ValueModelHyperparameters(
                reward={"type": "reward_model", "model": RM_ID},
                samples_per_prompt=args.samples_per_prompt, max_new_tokens=MAX_TOKENS,
                top_k=TOP_K, n_epochs=args.value_epochs, batch_size=32,
                learning_rate=3e-4, max_seq_length=64, checkpoint_every=10_000,
                eval_every=10_000)
            prompts = read_jsonl(world.prompts)[: 250 if args.quick else 1000]
            value = train("value_model", world.base_model, prompts, value_hp, scratch / "value",
                          base_model=BASE_ID, reward_url=reward_url)
            register(database_url, world.base_model, None, value)
            with alignd_server("inference", {**env, "ALIGND_REWARD_URL": reward_url},
                               scratch / "inference.log") as inference_url:
                outcomes = run_configurations(inference_url, reward_url, eval_rows, betas, sizes,
                                              args.concurrency, args.repeats)
    report(outcomes, len(eval_rows), args.concurrency, args.reward_head, service_threads)


def run_configurations(inference_url: str, reward_url: str, rows: list[dict[str, Any]],
                       betas: list[float], sizes: list[int], concurrency: int,
                       repeats: int) -> list[Outcome]:
    from trainer.demo_world.task import gold_grade

    configs: dict[str, dict[str, Any]] = {}
    for beta in betas:
        configs[f"VAS beta={beta:g}"] = {"value_guidance": [{"model": VALUE_ID, "beta": beta}]}
    for n in sizes:
        configs[f"best-of-{n}"] = {"best_of_n": {
            "n": n, "reward": {"type": "reward_model", "model": RM_ID}}}
    configs["plain top-k"] = {}
    for extra in configs.values():  # warm-up: every model loaded before the clock starts
        asyncio.run(generate(inference_url, rows[:4], extra, 4))
    outcomes = []
    for name, extra in configs.items():
        times = []
        for _ in range(repeats):  # requests are seeded: every repeat returns the same texts
            texts, seconds, tokens = asyncio.run(generate(inference_url, rows, extra,
                                                          concurrency))
            times.append(seconds)
        seconds = statistics.median(times)
        accuracy = statistics.mean(gold_grade(t, r["answer"]) for t, r in zip(texts, rows))
        proxy = statistics.mean(proxy_rewards(reward_url, rows, texts))
        outcomes.append(Outcome(name, seconds, accuracy, proxy, tokens))
        print(f"  {name}: {seconds:.1f} s, accuracy {accuracy:.3f}, proxy {proxy:.3f}")
    return outcomes


def report(outcomes: list[Outcome], prompts: int, concurrency: int, head: str,
           threads: int) -> None:
    print(f"\n{prompts} held-out prompts, {concurrency} in flight (wall time: median of the "
          f"repeats), temperature 1, top_k {TOP_K}, max_tokens {MAX_TOKENS}; torch {threads} "
          f"thread(s) per service; proxy reward model head: {head}; the gold reward is the "
          "task's grader (1 for the exact answer, else 0), so its mean is the accuracy")
    print_table(["configuration", "wall s", "mean gold reward", "mean proxy reward",
                 "tokens/s"],
                [[o.name, o.seconds, o.accuracy, o.proxy_reward,
                  o.completion_tokens / o.seconds] for o in outcomes])
    by_name = {o.name: o for o in outcomes}
    plain = by_name["plain top-k"]
    vas = [o for o in outcomes if o.name.startswith("VAS") and not o.name.endswith("=0")]
    for o in vas:
        speed = ratio(o.completion_tokens / o.seconds, plain.completion_tokens / plain.seconds)
        print(f"{o.name}: tokens/s {speed:.2f}x plain sampling; wall time "
              f"{ratio(o.seconds, plain.seconds):.2f}x plain sampling's")
    target = by_name.get("best-of-16")
    if target is None:
        return
    print("goal: reach best-of-16's mean reward in <= 0.25 of its time")
    for o in vas:
        time_share = ratio(o.seconds, target.seconds)
        print(f"{o.name} vs best-of-16: time {time_share:.2f}; gold {o.accuracy:.3f} vs "
              f"{target.accuracy:.3f} ({_verdict(o.accuracy, target.accuracy, time_share)}); "
              f"proxy {o.proxy_reward:.3f} vs {target.proxy_reward:.3f} "
              f"({_verdict(o.proxy_reward, target.proxy_reward, time_share)})")


def _verdict(reward: float, target: float, time_share: float) -> str:
    return "met" if reward >= target and time_share <= 0.25 else "not met"


if __name__ == "__main__":
    main()
