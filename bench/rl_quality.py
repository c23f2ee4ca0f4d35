"""Online RL on the demo task: held-out quality before and after each algorithm, and its cost.

One run:
  1. fine-tunes the demo world's pretrained base as `alignd demo` does (the `supervised`
     method, 300 steps of 32 rows, lr 1e-3), cached under bench/out/ by its configuration;
  2. starts alignd's reward service in a thread on loopback (a throwaway migrated database),
     scoring with the gold grader as a `string_check` (the response is the answer), which it
     checks against the task's `gold_grade` on 800 sampled responses;
  3. trains the supervised model with each algorithm through `OnlineLoop` (the `reinforcement`
     method's loop) on the demo's 1,000 RL prompts, for --steps steps or --budget-minutes,
     each algorithm in a process of its own (its peak memory is its own);
  4. measures the supervised model and each trained policy on the 200 held-out problems:
  - exact match: greedy answers graded by `gold_grade` (as `exact_match_accuracy` does);
  - mean gold reward: `gold_grade` of EVAL_SAMPLES responses per prompt sampled at
    temperature 1, the policy's own distribution;
  - KL to the start: the mean over those samples of Σ_t log π(a_t) − log π_sft(a_t), an
    unbiased estimate of KL(π ‖ π_sft) per response;
  - all-wrong groups: the share of a step's prompts whose responses all scored 0 (GRPO's
    advantage is 0 there, NGRPO's is not), and the loop's `uniform_group_fraction`;
  - unsolved: exact match on the held-out prompts none of whose supervised samples was right.

    python -m bench.rl_quality                         # every algorithm, the defaults below
    python -m bench.rl_quality --algorithms grpo --steps 20
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from bench._harness import REPO, fresh_database, machine_info, ratio, scratch_dir

OUT = REPO / "bench" / "out" / "rl_quality"
ALGORITHMS = ("grpo", "rloo", "remax", "ngrpo", "ppo")
SFT_HYPERPARAMETERS: dict[str, Any] = {"max_steps": 300, "n_epochs": 100, "batch_size": 32,
                                       "learning_rate": 1e-3, "checkpoint_every": 10_000}
"""What `alignd demo` fine-tunes with (cli/demo.py), without its validation file."""
GOLD_REWARD: dict[str, Any] = {"type": "string_check", "name": "exact",
                               "input": "{{sample.output_text}}",
                               "reference": "{{item.answer}}", "operation": "eq"}
"""The gold grader as a reward spec: the response (decoded up to its stop token) is the answer."""
RL_HYPERPARAMETERS: dict[str, Any] = {
    "prompts_per_step": 16, "group_size": 8, "max_new_tokens": 6, "temperature": 1.0,
    "learning_rate": 3e-5, "lr_scheduler": "constant", "beta": 0.0,
    "checkpoint_every": 100_000, "eval_every": 100_000, "max_seq_length": 32}
"""Every algorithm's hyperparameters (the reinforcement defaults otherwise; PPO's own beta 0.05 is
set to 0 too, so that no algorithm loads a reference). lr 3e-5 from the runs in RESULTS.md §9:
1e-5 barely moves, 1e-4 and 3e-4 fit the training prompts faster and lose held-out exact
match, 1e-3 collapses to reward 0 within 100 steps."""
EVAL_SAMPLES = 4
"""Responses sampled per held-out prompt for the mean reward and the KL."""
MAX_NEW_TOKENS = 8
"""Greedy tokens per held-out answer (answers are at most 4 characters and a stop token)."""


@dataclass
class Quality:
    """A model on the held-out prompts."""

    exact_match: float
    mean_reward: float
    kl_to_start: float
    unsolved_exact_match: float
    """Exact match on the prompts whose supervised samples were all wrong."""
    solved_in_samples: list[bool] = field(repr=False)
    """Per prompt: at least one of its samples was right."""


@dataclass
class Run:
    algorithm: str
    quality: Quality | None
    seconds: float
    steps: int
    metrics: dict[int, dict[str, float]]
    peak_mib: float = float("nan")
    """Peak memory of the training above what the process held before it (CPU: resident
    set; CUDA: allocated)."""
    note: str = ""

    def mean_metric(self, name: str) -> float:
        values = [m[name] for m in self.metrics.values() if name in m]
        return statistics.mean(values) if values else float("nan")


# --- the supervised start -------------------------------------------------------------------


def supervised_model(world: Any) -> Path:
    """The demo's supervised model, trained once per (world, configuration) and cached."""
    from services.methods import SupervisedHyperparameters
    from trainer.context import TrainingContext
    from trainer.demo_world.datasets import read_jsonl
    from trainer.methods import METHODS

    manifest = json.loads((world.root / "manifest.json").read_text())
    key = json.dumps({"world": manifest["config_hash"], "sft": SFT_HYPERPARAMETERS, "seed": 0},
                     sort_keys=True)
    target = OUT / f"sft-{hashlib.sha256(key.encode()).hexdigest()[:12]}"
    if (target / "config.json").is_file():
        return target
    scratch = OUT / f"{target.name}.tmp"
    shutil.rmtree(scratch, ignore_errors=True)
    started = time.perf_counter()
    ctx = TrainingContext(
        job_id="bench-sft", base_model_path=world.base_model,
        training_rows=read_jsonl(world.supervised), validation_rows=None,
        hyperparameters=SupervisedHyperparameters.model_validate(SFT_HYPERPARAMETERS), seed=0,
        output_dir=scratch / "model", checkpoint_root=scratch / "checkpoints")
    METHODS["supervised"](ctx)
    (scratch / "model").rename(target)
    shutil.rmtree(scratch)
    print(f"supervised model trained in {time.perf_counter() - started:.0f} s: {target}")
    return target


# --- the reward service ---------------------------------------------------------------------


@contextmanager
def reward_service() -> Iterator[str]:
    """alignd's reward service in a thread of this process, on a throwaway database."""
    from reward_service.main import create_app
    from services.settings import RewardSettings
    from services.web import ServerThread

    with fresh_database("alignd_bench_rl") as database_url:
        settings = RewardSettings(_env_file=None, environment="test",  # type: ignore[call-arg]
                                  database_url=database_url, require_api_key=False,
                                  log_level="WARNING")
        with ServerThread(create_app(settings)) as server:
            yield server.url


def check_reward(reward_url: str, rows: list[dict[str, Any]], texts: list[str]) -> int:
    """How many responses GOLD_REWARD scores differently from the task's `gold_grade`."""
    from trainer.demo_world.task import gold_grade
    from trainer.online.scoring import reward_item, score_items

    scores = score_items(reward_url, [reward_item(r, t) for r, t in zip(rows, texts)],
                         GOLD_REWARD)
    return sum(s != gold_grade(t, r["answer"]) for s, t, r in zip(scores, texts, rows))


# --- held-out quality -----------------------------------------------------------------------


@dataclass
class Samples:
    """EVAL_SAMPLES responses per held-out prompt, prompt by prompt."""

    prompts: list[list[int]]
    responses: list[list[int]]
    texts: list[str]
    rows: list[dict[str, Any]]


def sample(model: Any, model_path: Path, tokenizer: Any, rows: list[dict[str, Any]],
           seed: int) -> Samples:
    from inference.local import LocalGenerator
    from modeling.sequences import UNLIMITED, encode_prompt
    from trainer.online.sampler import RolloutOptions, Sampler

    prompts = [encode_prompt(tokenizer, row, UNLIMITED) for row in rows]
    sampler = Sampler(model_path, tokenizer, LocalGenerator(max_batch_size=256),
                      live_model=model)
    try:
        completions = sampler.sample(prompts, RolloutOptions(
            samples_per_prompt=EVAL_SAMPLES, max_new_tokens=MAX_NEW_TOKENS, temperature=1.0,
            top_k=0, seed=seed))
    finally:
        sampler.close()
    return Samples([prompts[c.prompt] for c in completions], [c.token_ids for c in completions],
                   [c.text for c in completions], [rows[c.prompt] for c in completions])


@torch.no_grad()
def sequence_logprobs(model: Any, samples: Samples, pad_id: int, batch: int = 256) -> Tensor:
    """(N,) Σ_t log π(a_t | s_t) of each sampled response under ``model``."""
    from modeling.logprobs import gather_logprobs, response_logits
    from trainer.online.experience import chunks, pack

    totals = []
    for rows in chunks(len(samples.prompts), batch):
        sequences, attention_mask, mask = pack(samples.prompts[rows], samples.responses[rows],
                                               pad_id, torch.device("cpu"))
        length = mask.shape[1]
        logits = response_logits(model, sequences, attention_mask, length)  # (b, T, V)
        logprobs = gather_logprobs(logits, sequences[:, -length:])  # (b, T)
        totals.append((logprobs * mask).sum(-1))
    return torch.cat(totals)


def measure(model: Any, start: Any, model_path: Path, tokenizer: Any,
            rows: list[dict[str, Any]], solved_before: list[bool] | None) -> Quality:
    """``model`` on the held-out ``rows``; ``start`` is the supervised model (KL's reference)."""
    from trainer.demo_world.evaluate import greedy_completions
    from trainer.demo_world.task import gold_grade

    model.eval()
    greedy = greedy_completions(model, tokenizer, [r["prompt"] for r in rows],
                                max_new_tokens=MAX_NEW_TOKENS, batch_size=200)
    right = [gold_grade(text, row["answer"]) for text, row in zip(greedy, rows)]
    samples = sample(model, model_path, tokenizer, rows, seed=0)
    rewards = [gold_grade(t, r["answer"]) for t, r in zip(samples.texts, samples.rows)]
    pad_id = tokenizer.pad_token_id
    kl = sequence_logprobs(model, samples, pad_id) - sequence_logprobs(start, samples, pad_id)
    solved = [max(rewards[i * EVAL_SAMPLES:(i + 1) * EVAL_SAMPLES]) > 0 for i in range(len(rows))]
    unsolved = [r for r, s in zip(right, solved_before or solved) if not s]
    return Quality(exact_match=statistics.mean(right), mean_reward=statistics.mean(rewards),
                   kl_to_start=float(kl.mean()),
                   unsolved_exact_match=statistics.mean(unsolved) if unsolved else float("nan"),
                   solved_in_samples=solved)


# --- training -------------------------------------------------------------------------------


@dataclass
class Recorder:
    """The job runner's side of a TrainingContext: metrics kept, a wall-clock budget kept."""

    budget_seconds: float
    started: float = field(default_factory=time.perf_counter)
    metrics: dict[int, dict[str, float]] = field(default_factory=dict)

    def report_metrics(self, step: int, metrics: dict[str, float]) -> None:
        self.metrics[step] = dict(metrics)

    def check_continue(self) -> None:
        from trainer.context import JobStopped

        if time.perf_counter() - self.started > self.budget_seconds:
            raise JobStopped(f"budget of {self.budget_seconds:.0f} s spent")


def train(algorithm: str, sft: Path, rows: list[dict[str, Any]], reward_url: str,
          hyperparameters: dict[str, Any], budget_seconds: float, workdir: Path,
          validation_rows: list[dict[str, Any]] | None = None) -> tuple[Any, Recorder, float]:
    """The policy trained with ``algorithm`` from ``sft`` (in memory), its metrics, seconds.
    Stops at max_steps or, before the step that would start past the budget, at the budget."""
    from services.methods import Method
    from trainer.context import JobStopped, TrainingContext

    method = Method.model_validate({"type": "reinforcement", "reinforcement": {
        "algorithm": algorithm, "reward": GOLD_REWARD, "hyperparameters": hyperparameters}})
    recorder = Recorder(budget_seconds)
    ctx = TrainingContext(
        job_id=f"bench-{algorithm}", base_model_path=sft, training_rows=rows,
        validation_rows=validation_rows, hyperparameters=method.hyperparameters, seed=0,
        output_dir=workdir / algorithm / "model",
        checkpoint_root=workdir / algorithm / "checkpoints",
        report_metrics=recorder.report_metrics, check_continue=recorder.check_continue,
        reward=GOLD_REWARD, reward_url=reward_url)
    from trainer.online.loop import OnlineLoop

    loop = OnlineLoop(ctx)
    try:
        loop.train()
    except JobStopped:
        pass
    return loop.model, recorder, time.perf_counter() - recorder.started


@dataclass(frozen=True)
class Setup:
    """What every algorithm's run shares; picklable, as each runs in a process of its own (its
    peak memory is its own, and no run inherits another's allocator or thread pools)."""

    sft: Path
    train_rows: list[dict[str, Any]]
    eval_rows: list[dict[str, Any]]
    reward_url: str
    hyperparameters: dict[str, Any]
    budget_seconds: float
    workdir: Path
    threads: int
    before: Quality
    eval_every: int | None
    """Steps between the loop's own held-out evaluations (greedy, scored by the reward
    service), inside the budget; None: none."""


def run_isolated(algorithm: str, setup: Setup) -> Run:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(run_algorithm, algorithm, setup).result()


def run_algorithm(algorithm: str, setup: Setup) -> Run:
    """One algorithm trained and measured; a run the loop refuses is a note instead."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()  # PPO's critic: the load report of its fresh value head
    torch.set_num_threads(setup.threads)
    start = AutoModelForCausalLM.from_pretrained(setup.sft).eval()
    tokenizer = AutoTokenizer.from_pretrained(setup.sft)
    hyperparameters = dict(setup.hyperparameters)
    if setup.eval_every:
        hyperparameters["eval_every"] = setup.eval_every
    held = _reset_peak_memory()
    try:
        model, recorder, seconds = train(
            algorithm, setup.sft, setup.train_rows, setup.reward_url, hyperparameters,
            setup.budget_seconds, setup.workdir, setup.eval_rows if setup.eval_every else None)
    except ValueError as exc:  # an algorithm the loop refuses (PPO before it had a critic)
        return Run(algorithm, None, 0.0, 0, {}, note=f"not run: {exc}")
    peak = _peak_memory() - held
    model = model.cpu()  # measured where the supervised start is
    quality = measure(model, start, setup.sft, tokenizer, setup.eval_rows,
                      setup.before.solved_in_samples)
    return Run(algorithm, quality, seconds, len(recorder.metrics), recorder.metrics, peak)


def _reset_peak_memory() -> float:
    """The memory held now (MiB); from here on `_peak_memory` reports the peak. On CPU the
    resident set's high-water mark is reset through /proc/self/clear_refs (Linux)."""
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated() / 2**20
    Path("/proc/self/clear_refs").write_text("5")
    return _proc_status_mib("VmRSS")


def _peak_memory() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return _proc_status_mib("VmHWM")


def _proc_status_mib(field_name: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field_name}:"):
            return int(line.split()[1]) / 2**10  # kB
    return float("nan")


# --- report ---------------------------------------------------------------------------------


def report(before: Quality, runs: list[Run], budget_seconds: float) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="held-out demo problems (200): the supervised start → after RL")
    for header in ("algorithm", "steps", "wall s", "s/step", "exact match", "Δ points",
                   "mean gold reward", "KL to start", "all-wrong groups", "uniform groups",
                   "unsolved: exact match", "peak MiB"):
        table.add_column(header, justify="left" if header == "algorithm" else "right")
    table.add_row("supervised (start)", "", "", "", f"{before.exact_match:.3f}", "",
                  f"{before.mean_reward:.3f}", "0", "", "", f"{before.unsolved_exact_match:.3f}",
                  "")
    for run in runs:
        if run.quality is None:
            table.add_row(run.algorithm, *[""] * 11)
            continue
        q = run.quality
        table.add_row(
            run.algorithm, str(run.steps), f"{run.seconds:.0f}",
            f"{run.mean_metric('step_seconds'):.2f}",
            f"{before.exact_match:.3f} → {q.exact_match:.3f}",
            f"{100 * (q.exact_match - before.exact_match):+.1f}",
            f"{before.mean_reward:.3f} → {q.mean_reward:.3f}", f"{q.kl_to_start:.3f}",
            f"{run.mean_metric('zero_reward_group_fraction'):.3f}",
            f"{run.mean_metric('uniform_group_fraction'):.3f}",
            f"{before.unsolved_exact_match:.3f} → {q.unsolved_exact_match:.3f}",
            f"{run.peak_mib:.0f}")
    Console(width=200).print(table)
    for run in runs:
        if run.note:
            print(f"{run.algorithm}: {run.note}")
        elif run.metrics:
            parts = ("rollout", "score", "update")
            print(f"{run.algorithm}: mean s per step " + ", ".join(
                f"{part} {run.mean_metric(f'{part}_seconds'):.3f}" for part in parts))
        curve = [(step, m["valid_reward_mean"]) for step, m in sorted(run.metrics.items())
                 if "valid_reward_mean" in m]
        if curve:
            print(f"{run.algorithm} held-out exact match during training (step: greedy, the "
                  f"loop's own): " + ", ".join(f"{s}: {v:.3f}" for s, v in curve))
    by_name = {run.algorithm: run for run in runs if run.quality is not None}
    verdicts(before, by_name, budget_seconds)


def verdicts(before: Quality, runs: dict[str, Run], budget_seconds: float) -> None:
    grpo, ngrpo, remax, ppo = (runs.get(name) for name in ("grpo", "ngrpo", "remax", "ppo"))
    if grpo is not None and grpo.quality is not None:
        gain = 100 * (grpo.quality.exact_match - before.exact_match)
        met = gain >= 15 and grpo.seconds <= 600
        print(f"goal: GRPO raises held-out exact match by >= 15 points within 10 CPU minutes: "
              f"{gain:+.1f} points in {grpo.seconds / 60:.1f} min "
              f"(budget {budget_seconds / 60:.0f} min): {'met' if met else 'not met'}")
    if grpo is not None and ngrpo is not None and grpo.quality and ngrpo.quality:
        print("all-wrong groups (every response scored 0; GRPO's advantage there is 0, NGRPO's "
              "virtual r_max sample makes it negative): "
              f"GRPO {grpo.mean_metric('zero_reward_group_fraction'):.3f} of groups, NGRPO "
              f"{ngrpo.mean_metric('zero_reward_group_fraction'):.3f}; held-out prompts no "
              f"supervised sample solved ({_unsolved(before)}): exact match GRPO "
              f"{grpo.quality.unsolved_exact_match:.3f}, NGRPO "
              f"{ngrpo.quality.unsolved_exact_match:.3f} (start "
              f"{before.unsolved_exact_match:.3f})")
    if remax is not None and ppo is not None:
        print(f"ReMax vs PPO, same steps and batch: step time "
              f"{ratio(remax.mean_metric('step_seconds'), ppo.mean_metric('step_seconds')):.2f}x,"
              f" peak memory {ratio(remax.peak_mib, ppo.peak_mib):.2f}x PPO's")


def _unsolved(before: Quality) -> str:
    count = sum(not solved for solved in before.solved_in_samples)
    return f"{count} of {len(before.solved_in_samples)}"


# --- main -----------------------------------------------------------------------------------


def main() -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from trainer.demo_world import build_demo_world, default_demo_root
    from trainer.demo_world.datasets import read_jsonl

    args = parse_args()
    hf_logging.disable_progress_bar()
    torch.set_num_threads(args.torch_threads)
    hyperparameters = {**RL_HYPERPARAMETERS, "max_steps": args.steps,
                       **json.loads(args.hyperparameters)}
    print(f"machine: {machine_info()}")
    print(f"hyperparameters (every algorithm): {hyperparameters}; budget "
          f"{args.budget_minutes:g} min per algorithm")
    world = build_demo_world(default_demo_root())
    sft = supervised_model(world)
    eval_rows = read_jsonl(world.eval_prompts)
    start = AutoModelForCausalLM.from_pretrained(sft).eval()
    tokenizer = AutoTokenizer.from_pretrained(sft)
    before = measure(start, start, sft, tokenizer, eval_rows, None)
    with reward_service() as reward_url, scratch_dir("alignd-bench-rl-") as workdir:
        samples = sample(start, sft, tokenizer, eval_rows, seed=1)
        print(f"reward spec vs gold_grade: {check_reward(reward_url, samples.rows, samples.texts)}"
              f" of {len(samples.texts)} sampled responses scored differently")
        setup = Setup(sft, read_jsonl(world.prompts), eval_rows, reward_url, hyperparameters,
                      60 * args.budget_minutes, workdir, args.torch_threads, before,
                      args.eval_every)
        runs = []
        for algorithm in args.algorithms:
            runs.append(run_isolated(algorithm, setup))
            print(f"  {algorithm}: {runs[-1].steps} steps in {runs[-1].seconds:.0f} s "
                  f"{runs[-1].note}")
    report(before, runs, 60 * args.budget_minutes)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--algorithms", nargs="+", choices=ALGORITHMS, default=list(ALGORITHMS))
    parser.add_argument("--steps", type=int, default=300, help="max_steps of every run")
    parser.add_argument("--budget-minutes", type=float, default=10.0,
                        help="wall-clock budget of each run; no step starts after it")
    parser.add_argument("--torch-threads", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--hyperparameters", default="{}",
                        help="JSON merged over the defaults, e.g. '{\"learning_rate\": 1e-4}'")
    parser.add_argument("--eval-every", type=int, default=None,
                        help="also evaluate held-out exact match every N steps (in the budget)")
    return parser.parse_args()


if __name__ == "__main__":
    main()
