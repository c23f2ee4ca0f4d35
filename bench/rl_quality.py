"""Online RL and preference optimisation on the demo task: held-out quality before and after
each algorithm, and its cost.

One run:
  1. fine-tunes the demo world's pretrained base as `alignd demo` does (the `supervised`
     method, 300 steps of 32 rows, lr 1e-3), cached under bench/out/ by its configuration;
  2. starts alignd's reward service in a thread on loopback (a throwaway migrated database),
     scoring with the gold grader as a `string_check` (the response is the answer), which it
     checks against the task's `gold_grade` on 800 sampled responses;
  3. trains the supervised model with each algorithm, each in a process of its own (its peak
     memory is its own), for --steps steps or --budget-minutes:
     - DPO, IPO, cDPO and TDPO through a `dpo` job's loop on the demo's 2,000 preference pairs
       (chosen: the gold answer; rejected: a wrong answer or the question echoed);
     - GRPO, RLOO, ReMax, NGRPO, PPO, RTO and SuperHF through `OnlineLoop` (the
       `reinforcement` method's loop) on the demo's 10,000 RL prompts; RTO's `dpo_model` is the
       model a preference run trained (`dpo` unless --rto-dpo-model names another; that run
       comes first whenever RTO runs);
  4. measures the supervised model and each trained policy on the 200 held-out problems:
  - exact match: greedy answers graded by `gold_grade` (as `exact_match_accuracy` does);
  - mean gold reward: `gold_grade` of EVAL_SAMPLES responses per prompt sampled at
    temperature 1, the policy's own distribution;
  - KL to the start: the mean over those samples of Σ_t log π(a_t) − log π_sft(a_t), an
    unbiased estimate of KL(π ‖ π_sft) per response;
  - all-wrong groups: the share of a step's prompts whose responses all scored 0 (GRPO's
    advantage is 0 there, NGRPO's is not), and the loop's `uniform_group_fraction`;
  - unsolved: exact match on the held-out prompts none of whose supervised samples was right.

    python -m bench.rl_quality                         # every algorithm, 1,000 steps each
    python -m bench.rl_quality --algorithms grpo ngrpo --steps 5000 --eval-every 250
    python -m bench.rl_quality --algorithms grpo --steps 20
    python -m bench.rl_quality --algorithms dpo rto ppo   # RTO against PPO, DPO first
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
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

from bench._harness import REPO, fresh_database, machine_info, ratio, scratch_dir
from bench._heldout import Quality, measure, peak_memory, reset_peak_memory, sample

OUT = REPO / "bench" / "out" / "rl_quality"
ONLINE = ("grpo", "rloo", "remax", "ngrpo", "ppo", "rto", "superhf")
"""`reinforcement` algorithms, trained by the online loop on the demo's prompts."""
PREFERENCE_RUNS: dict[str, dict[str, Any]] = {
    "dpo": {"loss": "sigmoid"}, "rpo": {"loss": "sigmoid", "sft_coefficient": 1.0},
    "ipo": {"loss": "ipo"}, "cdpo": {"loss": "conservative"}, "tdpo": {"loss": "tdpo"}}
"""`dpo` jobs, trained on the demo's preference pairs: each run's hyperparameters over
DPO_HYPERPARAMETERS (rpo: DPO with the chosen responses' NLL added, Pang et al. 2024)."""
ALGORITHMS = (*PREFERENCE_RUNS, *ONLINE)
"""In the order they run: RTO reads the model a preference run saved."""
OWN_BETA = ("rto", "superhf")
"""Algorithms whose β is part of the method (RTO's β₂ of the token reward, SuperHF's KL
prior): they keep their defaults instead of RL_HYPERPARAMETERS' 0."""
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
set to 0 too, so that no algorithm loads a reference). lr 3e-5 from RESULTS.md §9's runs on
the gold-demonstration world:
1e-5 barely moves, 1e-4 and 3e-4 fit the training prompts faster and lose held-out exact
match, 1e-3 collapses to reward 0 within 100 steps."""
DPO_HYPERPARAMETERS: dict[str, Any] = {
    "batch_size": 16, "learning_rate": 1e-5, "lr_scheduler": "constant", "beta": 0.1,
    "n_epochs": 100, "checkpoint_every": 100_000, "max_seq_length": 32}
"""Every `dpo` run's hyperparameters (max_steps from --steps; the loss per run). Plain DPO
lowered held-out exact match at every learning rate tried (2e-6: -5 points, 1e-5: -12.5,
1e-4: -17.5, 1e-3: collapse, 250 steps): the chosen responses' log-probability falls with the
rejected ones' (-0.3 to -1.5 nats), the "likelihood displacement" RPO's NLL term counters."""


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


@dataclass(frozen=True)
class Setup:
    """What every algorithm's run shares; picklable, as each runs in a process of its own (its
    peak memory is its own, and no run inherits another's allocator or thread pools)."""

    sft: Path
    train_rows: list[dict[str, Any]]
    preference_rows: list[dict[str, Any]]
    eval_rows: list[dict[str, Any]]
    reward_url: str
    hyperparameters: dict[str, Any]
    dpo_hyperparameters: dict[str, Any]
    budget_seconds: float
    workdir: Path
    threads: int
    before: Quality
    eval_every: int | None
    """Steps between the loop's own held-out evaluations (greedy, scored by the reward
    service), inside the budget; None: none."""
    rto_dpo_run: str = "dpo"
    """The preference run whose model is RTO's `dpo_model`."""

    def output_dir(self, algorithm: str) -> Path:
        return self.workdir / algorithm / "model"

    def context(self, algorithm: str, method: Any, recorder: Recorder, **fields: Any) -> Any:
        from trainer.context import TrainingContext

        return TrainingContext(
            job_id=f"bench-{algorithm}", base_model_path=self.sft,
            hyperparameters=method.hyperparameters, seed=0,
            output_dir=self.output_dir(algorithm),
            checkpoint_root=self.workdir / algorithm / "checkpoints",
            report_metrics=recorder.report_metrics, check_continue=recorder.check_continue,
            resolve_model=lambda _: self.output_dir(self.rto_dpo_run), **fields)


def train_online(algorithm: str, setup: Setup, recorder: Recorder) -> Any:
    """The policy trained with the online ``algorithm`` from the supervised model (in memory).
    Stops at max_steps or, before the step that would start past the budget, at the budget.
    RTO's `dpo_model` is the model the --rto-dpo-model run saved."""
    from services.methods import Method
    from trainer.context import JobStopped
    from trainer.online.loop import OnlineLoop

    hyperparameters = dict(setup.hyperparameters)
    if algorithm in OWN_BETA:
        del hyperparameters["beta"]
    if algorithm == "rto":
        hyperparameters["dpo_model"] = "ft:bench:dpo"
    if setup.eval_every:
        hyperparameters["eval_every"] = setup.eval_every
    method = Method.model_validate({"type": "reinforcement", "reinforcement": {
        "algorithm": algorithm, "reward": GOLD_REWARD, "hyperparameters": hyperparameters}})
    loop = OnlineLoop(setup.context(
        algorithm, method, recorder, training_rows=setup.train_rows,
        validation_rows=setup.eval_rows if setup.eval_every else None, reward=GOLD_REWARD,
        reward_url=setup.reward_url))
    try:
        loop.train()
    except JobStopped:
        pass
    return loop.model


def train_preference(algorithm: str, setup: Setup, recorder: Recorder) -> Any:
    """The policy trained by a `dpo` job's loop with ``algorithm``'s loss on the demo's
    preference pairs, from the supervised model; saved (RTO may read it) and returned."""
    from services.methods import Method
    from trainer.context import JobStopped
    from trainer.methods.dpo import DpoTrainer

    method = Method.model_validate({"type": "dpo", "dpo": {"hyperparameters": {
        **setup.dpo_hyperparameters, **PREFERENCE_RUNS[algorithm]}}})
    trainer = DpoTrainer(setup.context(algorithm, method, recorder,
                                       training_rows=setup.preference_rows,
                                       validation_rows=None))
    try:
        trainer.run_steps()
    except JobStopped:
        pass  # the budget ran out: what trained so far is the run's model
    trainer.model.save_pretrained(setup.output_dir(algorithm))
    trainer.tokenizer.save_pretrained(setup.output_dir(algorithm))
    return trainer.model


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
    train = train_preference if algorithm in PREFERENCE_RUNS else train_online
    recorder = Recorder(setup.budget_seconds)
    held = reset_peak_memory()
    try:
        model = train(algorithm, setup, recorder)
    except ValueError as exc:  # an algorithm the loop refuses (PPO before it had a critic)
        return Run(algorithm, None, 0.0, 0, {}, note=f"not run: {exc}")
    seconds = time.perf_counter() - recorder.started
    peak = peak_memory() - held
    model = model.cpu()  # measured where the supervised start is
    quality = measure(model, start, setup.sft, tokenizer, setup.eval_rows,
                      setup.before.solved_in_samples)
    return Run(algorithm, quality, seconds, len(recorder.metrics), recorder.metrics, peak)


# --- report ---------------------------------------------------------------------------------


def report(before: Quality, runs: list[Run], budget_seconds: float) -> None:
    from rich.console import Console
    from rich.table import Table

    def mean(run: Run, name: str) -> str:
        value = run.mean_metric(name)
        return "" if math.isnan(value) else f"{value:.3f}"  # a metric the run has not

    table = Table(title="held-out demo problems (200): the supervised start → after training")
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
            mean(run, "zero_reward_group_fraction"), mean(run, "uniform_group_fraction"),
            f"{before.unsolved_exact_match:.3f} → {q.unsolved_exact_match:.3f}",
            f"{run.peak_mib:.0f}")
    Console(width=200).print(table)
    for run in runs:
        if run.note:
            print(f"{run.algorithm}: {run.note}")
        elif run.algorithm in PREFERENCE_RUNS:
            final = run.metrics[max(run.metrics)] if run.metrics else {}
            print(f"{run.algorithm}: last step's reward accuracy "
                  f"{final.get('reward_accuracy', float('nan')):.3f}, margin "
                  f"{final.get('reward_margin', float('nan')):.3f}, tokens/s "
                  f"{run.mean_metric('tokens_per_second'):,.0f}")
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
    for name, label in (("dpo", "DPO"), ("rpo", "DPO with sft_coefficient 1 (RPO)")):
        run = runs.get(name)
        if run is not None and run.quality is not None:
            gain = 100 * (run.quality.exact_match - before.exact_match)
            print(f"goal: {label} on the demo preference pairs raises held-out exact match "
                  f"over the supervised model: {gain:+.1f} points: "
                  f"{'met' if gain > 0 else 'not met'}")
    rto = runs.get("rto")
    if rto is not None and ppo is not None and rto.quality and ppo.quality:
        met = rto.quality.exact_match >= ppo.quality.exact_match
        print(f"goal: RTO at least matches PPO on the same budget: exact match RTO "
              f"{rto.quality.exact_match:.3f}, PPO {ppo.quality.exact_match:.3f} "
              f"({rto.steps} and {ppo.steps} steps): {'met' if met else 'not met'}")
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
    dpo_hyperparameters = {**DPO_HYPERPARAMETERS, "max_steps": args.steps,
                           **json.loads(args.dpo_hyperparameters)}
    algorithms = [a for a in ALGORITHMS if a in args.algorithms  # RTO needs its DPO model
                  or (a == args.rto_dpo_model and "rto" in args.algorithms)]
    print(f"machine: {machine_info()}")
    print(f"online hyperparameters: {hyperparameters} (rto and superhf keep their own beta)")
    print(f"dpo hyperparameters: {dpo_hyperparameters}")
    print(f"budget {args.budget_minutes:g} min per algorithm")
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
        setup = Setup(sft, read_jsonl(world.prompts), read_jsonl(world.preference), eval_rows,
                      reward_url, hyperparameters, dpo_hyperparameters,
                      60 * args.budget_minutes, workdir, args.torch_threads, before,
                      args.eval_every, args.rto_dpo_model)
        runs = []
        for algorithm in algorithms:
            runs.append(run_isolated(algorithm, setup))
            print(f"  {algorithm}: {runs[-1].steps} steps in {runs[-1].seconds:.0f} s "
                  f"{runs[-1].note}")
    report(before, runs, 60 * args.budget_minutes)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--algorithms", nargs="+", choices=ALGORITHMS, default=list(ALGORITHMS))
    parser.add_argument("--steps", type=int, default=1000, help="max_steps of every run")
    parser.add_argument("--budget-minutes", type=float, default=10.0,
                        help="wall-clock budget of each run; no step starts after it")
    parser.add_argument("--torch-threads", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--hyperparameters", default="{}",
                        help="JSON merged over the online defaults, e.g. "
                             "'{\"learning_rate\": 1e-4}'")
    parser.add_argument("--rto-dpo-model", choices=list(PREFERENCE_RUNS), default="dpo",
                        help="the preference run whose model is RTO's dpo_model (dpo)")
    parser.add_argument("--dpo-hyperparameters", default="{}",
                        help="JSON merged over the dpo runs' defaults")
    parser.add_argument("--eval-every", type=int, default=None,
                        help="also evaluate held-out exact match every N steps (in the budget)")
    return parser.parse_args()


if __name__ == "__main__":
    main()
