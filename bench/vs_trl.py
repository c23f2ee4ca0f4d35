"""GRPO throughput: alignd's reinforcement job loop against TRL's `GRPOTrainer` (`--method dpo`:
DPO, alignd's dpo job loop against TRL's `DPOTrainer`, in bench/vs_trl_dpo.py).

Both sides train the same model (`--model`: the demo world's pretrained tiny Llama by default,
a real-style family's tiny checkpoint, or the large Qwen2) on its world's prompt rows
(`{"prompt", "answer"}`) with the same exact-match reward, group size, prompts per step,
completion length, sampling, optimizer settings, number of steps and torch thread count:

  alignd  `trainer.methods.METHODS["reinforcement"]` on a list-backed `TrainingContext`, as a
          job runs it: rollouts from the default rollout generator (`BatchGenerator`, a lean
          Llama decoder) over the live weights, scored over HTTP by `alignd serve reward` (a
          process of its own, as deployed, on a throwaway database) with a `string_check`
          spec: `{{sample.output_text}}` eq `{{item.answer}}`.
  trl     `trl.GRPOTrainer` (pinned by the `bench` extra) on CPU, generating with
          `model.generate`, rewarded in process by a plain callable: `completion == answer`.

A step is one rollout of prompts_per_step × group_size completions, scored, then one optimizer
step over all of them accumulated over micro-batches (TRL: per_device_train_batch_size = the
micro-batch, gradient_accumulation_steps = steps_per_generation = completions / micro-batch,
num_iterations = 1). Each side runs in a process of its own, the order alternating by repeat.

  samples/s    completions generated and trained per second of wall time, from the end of the
               first step (a warm-up, excluded) to the end of the last
  tokens/s     generated tokens (through the stop token) per second, same steps
  generate, reward, update
               seconds per step. alignd's are its step metrics: `rollout_seconds`,
               `score_seconds` (the time the step waited for the reward service after the
               work it does meanwhile: padding and the update's first forward) and
               `update_seconds` (everything else, that first forward included); TRL's come
               from timers around `_generate_single_turn`, the reward function, and the step
               outside `_generate_and_score_completions`
  rest         s/step minus those three
  CPU s/step   CPU time of the side's process per step, plus alignd's reward service's
  peak RSS     `ru_maxrss` of the side's process; alignd's reward service's VmHWM after "+"

    python -m bench.vs_trl --repeats 3                     # 8 prompts × 4, 16 tokens, 1 thread
    python -m bench.vs_trl --model qwen2-large --repeats 2  # matrix products dominate a step
    python -m bench.vs_trl --group-size 8 --prompts-per-step 16 --threads 2
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from bench._harness import (
    REPO,
    ServiceProcess,
    fresh_database,
    machine_info,
    print_table,
    ratio,
    scratch_dir,
    wait_healthy,
)

SEED = 0
REWARD = {"type": "string_check", "name": "exact", "operation": "eq",
          "input": "{{sample.output_text}}", "reference": "{{item.answer}}"}
"""alignd's reward spec; TRL's reward function `exact_match` computes the same."""
SIDES = ("alignd", "trl")


@dataclass(frozen=True)
class Settings:
    steps: int
    """Steps per side; the first is a warm-up, excluded from the rates."""
    group_size: int
    """Completions per prompt (TRL: num_generations)."""
    prompts_per_step: int
    max_new_tokens: int
    """Most tokens per completion (TRL: max_completion_length)."""
    micro_batch_size: int
    """Sequences per forward pass (TRL: per_device_train_batch_size)."""
    learning_rate: float
    threads: int
    """torch threads on both sides."""
    model: str = "demo"
    """`MODELS`: the demo's Llama, a real-style family's pretrained tiny checkpoint, or the
    large Qwen2 (random weights: it measures speed, not learning)."""

    @property
    def completions_per_step(self) -> int:
        return self.prompts_per_step * self.group_size

    @property
    def accumulation_steps(self) -> int:
        return self.completions_per_step // self.micro_batch_size


def trl_options(settings: Settings, output_dir: str) -> dict[str, Any]:
    """GRPOConfig's arguments: alignd's GRPO defaults (token-mean loss over the whole step,
    rewards scaled by the group's std, no KL, clip 0.2, one epoch, AdamW without weight decay,
    constant learning rate, gradient norm clipped at 1) in TRL's names. The optimizer is TRL's
    default, fused AdamW; alignd's is torch.optim.AdamW with torch's default (for-each)."""
    return {
        "output_dir": output_dir, "use_cpu": True, "bf16": False,
        "gradient_checkpointing": False, "seed": SEED, "report_to": "none",
        "save_strategy": "no", "logging_steps": 1, "disable_tqdm": True,
        "max_steps": settings.steps, "num_generations": settings.group_size,
        "per_device_train_batch_size": settings.micro_batch_size,
        "gradient_accumulation_steps": settings.accumulation_steps,
        "steps_per_generation": settings.accumulation_steps, "num_iterations": 1,
        "max_completion_length": settings.max_new_tokens, "temperature": 1.0, "top_k": 0,
        "top_p": 1.0, "loss_type": "dapo", "scale_rewards": "group", "beta": 0.0,
        "epsilon": 0.2, "learning_rate": settings.learning_rate,
        "lr_scheduler_type": "constant", "warmup_steps": 0, "weight_decay": 0.0,
        "max_grad_norm": 1.0, "optim": "adamw_torch_fused",
        "model_init_kwargs": {"dtype": "float32"},
    }


def alignd_hyperparameters(settings: Settings) -> dict[str, Any]:
    """The reinforcement method's hyperparameters (GRPO defaults otherwise)."""
    return {"prompts_per_step": settings.prompts_per_step, "group_size": settings.group_size,
            "max_new_tokens": settings.max_new_tokens, "temperature": 1.0, "top_k": 0,
            "micro_batch_size": settings.micro_batch_size, "max_steps": settings.steps,
            "learning_rate": settings.learning_rate, "lr_scheduler": "constant",
            "checkpoint_every": 10**6}


@dataclass
class Step:
    ended: float
    """perf_counter() when the step's metrics were reported."""
    cpu: float
    """process_time() then: CPU seconds of every thread of the side's process so far."""
    samples: int
    response_tokens: int
    split: dict[str, float]
    """Seconds generating, scoring and updating."""


@dataclass
class SideResult:
    side: str
    steps: list[Step]
    peak_rss_bytes: int
    paths: list[str] = field(default_factory=list)
    """Which forward trained and which engine generated, as the side reports them, and its
    torch threads."""
    reward_means: list[float] = field(default_factory=list)
    reward_rss_bytes: int = 0
    """Peak RSS of the reward service process (alignd's side only)."""
    reward_cpu_seconds: float = 0.0
    """CPU seconds the reward service spent while this side ran, all steps (alignd only)."""

    @property
    def measured(self) -> list[Step]:
        return self.steps[1:]

    @property
    def seconds(self) -> float:
        return self.steps[-1].ended - self.steps[0].ended

    @property
    def samples_per_second(self) -> float:
        return sum(s.samples for s in self.measured) / self.seconds

    @property
    def tokens_per_second(self) -> float:
        return sum(s.response_tokens for s in self.measured) / self.seconds

    @property
    def seconds_per_step(self) -> float:
        return self.seconds / len(self.measured)

    @property
    def cpu_per_step(self) -> float:
        """CPU seconds per measured step of the side's process, plus the reward service's
        (whose CPU time is only known over all steps, the warm-up included)."""
        own = (self.steps[-1].cpu - self.steps[0].cpu) / len(self.measured)
        return own + self.reward_cpu_seconds / len(self.steps)

    def split(self, name: str) -> float:
        return statistics.mean(s.split[name] for s in self.measured)


# --- alignd's side --------------------------------------------------------------------------


def run_alignd(settings: Settings, model_path: Path, rows: list[dict[str, Any]],
               reward_url: str, out: Path) -> SideResult:
    """alignd's GRPO job loop in this process, on a list-backed TrainingContext."""
    from services.methods.reinforcement import ReinforcementMethod
    from trainer.context import TrainingContext
    from trainer.methods import METHODS

    steps: list[Step] = []
    rewards: list[float] = []

    def report_metrics(step: int, metrics: dict[str, float]) -> None:
        samples = settings.completions_per_step
        steps.append(Step(time.perf_counter(), time.process_time(), samples,
                          round(metrics["response_length"] * samples),
                          {"generate": metrics["rollout_seconds"],
                           "reward": metrics["score_seconds"],
                           "update": metrics["update_seconds"]}))
        rewards.append(metrics["reward_mean"])

    section = ReinforcementMethod.model_validate({  # method.reinforcement of a job
        "algorithm": "grpo", "reward": REWARD, "hyperparameters": alignd_hyperparameters(settings)})
    events: list[str] = []
    ctx = TrainingContext(
        job_id="bench-vs-trl", base_model_path=model_path, training_rows=rows,
        validation_rows=None, hyperparameters=section.hyperparameters, seed=SEED,
        output_dir=out / "model", checkpoint_root=out / "checkpoints",
        report_metrics=report_metrics, reward=section.reward, reward_url=reward_url,
        log=events.append)
    METHODS["reinforcement"](ctx)
    paths = [event for event in events if event.startswith(("training forward", "rollouts"))]
    return SideResult("alignd", steps, peak_rss(), paths + [threads()], reward_means=rewards)


# --- TRL's side -----------------------------------------------------------------------------


def exact_match(completions: list[str], answer: list[str], **_: Any) -> list[float]:
    """TRL reward function: 1.0 when the completion is exactly the row's answer (alignd's
    string_check `eq` of `{{sample.output_text}}` and `{{item.answer}}`)."""
    return [float(completion == gold) for completion, gold in zip(completions, answer,
                                                                  strict=True)]


class TrlClock(TrainerCallback):
    """GRPOTrainer's optimizer steps as `Step`s: wall and CPU time at each step's end, seconds
    in generation, in the reward function and in the rest of `_generate_and_score_completions`
    (see `timed`), and the generated tokens the reward function was shown."""

    def __init__(self, samples_per_step: int) -> None:
        self.samples_per_step = samples_per_step
        self.steps: list[Step] = []
        self.rewards: list[float] = []
        self.seconds: dict[str, float] = {}
        self.tokens = 0

    def timed(self, name: str, function: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - started
        return wrapper

    def exact_match_reward(self, completions: list[str], completion_ids: list[list[int]],
                           answer: list[str], **_: Any) -> list[float]:
        self.tokens += sum(len(ids) for ids in completion_ids)
        scores = exact_match(completions, answer)
        self.rewards.append(sum(scores) / len(scores))
        return scores

    def on_step_begin(self, *_: Any, **__: Any) -> None:
        self.seconds = {"began": time.perf_counter()}
        self.tokens = 0

    def on_step_end(self, *_: Any, **__: Any) -> None:
        ended, seconds = time.perf_counter(), self.seconds
        update = ended - seconds["began"] - seconds.get("generate_and_score", 0.0)
        self.steps.append(Step(ended, time.process_time(), self.samples_per_step, self.tokens, {
            "generate": seconds.get("generate", 0.0), "reward": seconds.get("reward", 0.0),
            "update": update}))


def run_trl(settings: Settings, model_path: Path, rows: list[dict[str, Any]],
            out: Path) -> SideResult:
    """TRL's GRPOTrainer in this process, timed per optimizer step."""
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    clock = TrlClock(settings.completions_per_step)
    trainer = GRPOTrainer(
        model=str(model_path), reward_funcs=clock.timed("reward", clock.exact_match_reward),
        args=GRPOConfig(**trl_options(settings, str(out / "trl"))),
        train_dataset=Dataset.from_list(rows),
        processing_class=AutoTokenizer.from_pretrained(model_path), callbacks=[clock])
    trainer._generate_single_turn = clock.timed(  # type: ignore[method-assign]
        "generate", trainer._generate_single_turn)
    trainer._generate_and_score_completions = clock.timed(  # type: ignore[method-assign]
        "generate_and_score", trainer._generate_and_score_completions)
    trainer.train()
    config = trainer.args
    forward = (f"training forward: transformers' own ({type(trainer.model).__name__}, "
               f"padding_free={getattr(config, 'padding_free', False)})")
    paths = [forward,
             "rollouts: vLLM" if config.use_vllm else "rollouts: transformers' generate",
             threads()]
    return SideResult("trl", clock.steps, peak_rss(), paths, reward_means=clock.rewards)


def threads() -> str:
    """The side's torch threads (intra-op and inter-op) and OpenMP's setting."""
    import torch

    return (f"threads: torch {torch.get_num_threads()} intra-op, "
            f"{torch.get_num_interop_threads()} inter-op, "
            f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}")


def parameters(model: str) -> str:
    """The policy's parameter count, from its safetensors headers."""
    from safetensors import safe_open

    count = 0
    for path in bench_world(model).base_model.glob("*.safetensors"):
        with safe_open(path, "pt") as weights:
            names = weights.keys()  # a handle, not a dict
            count += sum(math.prod(weights.get_slice(name).get_shape()) for name in names)
    return f"{count / 1e6:.1f}M parameters"


def peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


# --- one side per process -------------------------------------------------------------------


def child_main(spec: str) -> None:
    """One side, as `run_side` asked for it in ``spec`` (JSON); its result in out/result.json."""
    import torch

    job = json.loads(spec)
    settings, out = Settings(**job["settings"]), Path(job["out"])
    torch.set_num_threads(settings.threads)
    world = bench_world(settings.model)
    rows = [json.loads(line) for line in world.prompts.read_text().splitlines() if line]
    if job["side"] == "alignd":
        from trainer.allocator import keep_freed_memory

        keep_freed_memory()  # as `alignd worker` does when it starts
        result = run_alignd(settings, world.base_model, rows, job["reward_url"], out)
    else:
        result = run_trl(settings, world.base_model, rows, out)
    result.paths.append(f"CPU s by thread: {busiest_threads()}; {faults()}")
    (out / "result.json").write_text(json.dumps(asdict(result)))


def stat_fields(path: Path) -> list[str]:
    """The fields of a /proc stat file after the command name (which may hold spaces), so
    that field 1 is the state: utime is [11], stime [12], minflt [7] (proc(5), less 3)."""
    return path.read_text().rsplit(")", 1)[1].split()


def faults() -> str:
    """This process's page faults and system CPU time so far: memory the allocator hands
    back to the kernel and takes again shows up as both."""
    fields, ticks = stat_fields(Path("/proc/self/stat")), os.sysconf("SC_CLK_TCK")
    return (f"minor page faults {int(fields[7]):,}, user {int(fields[11]) / ticks:.1f} s, "
            f"system {int(fields[12]) / ticks:.1f} s")


def busiest_threads(count: int = 4) -> str:
    """CPU seconds of this process's busiest threads (/proc/self/task; "main" is the one that
    ran the loop, the others by their kernel name, which Python leaves as the process's):
    whether a side keeps to its torch thread or leans on a second core."""
    used, ticks = [], os.sysconf("SC_CLK_TCK")
    for task in Path("/proc/self/task").iterdir():
        fields = stat_fields(task / "stat")
        name = "main" if task.name == str(os.getpid()) else (task / "comm").read_text().strip()
        used.append(((int(fields[11]) + int(fields[12])) / ticks, name))
    top = sorted(used, reverse=True)[:count]
    return ", ".join(f"{name} {seconds:.1f}" for seconds, name in top)


MODELS = ("demo", "qwen2", "llama3", "mistral", "gemma", "gpt2", "qwen2-large")
"""What `--model` names: the demo world's pretrained Llama, a real-style family's pretrained
tiny checkpoint (`trainer.real_world`), or the large Qwen2 (hidden 512, 8 layers, a 16k BPE
vocabulary, about 39M parameters, random weights)."""


def bench_world(model: str) -> Any:
    """The world (checkpoint and prompt rows) `--model` names, built once and cached."""
    if model == "demo":
        return demo_world()
    from trainer.real_world import build_family_world, default_real_root

    family, _, size = model.partition("-")
    if size:
        return build_family_world(default_real_root(), family, size=size, pretrain_steps=0)
    return build_family_world(default_real_root(), family)


def demo_world() -> Any:
    from trainer.demo_world import build_demo_world, default_demo_root

    return build_demo_world(default_demo_root())


def run_side(side: str, settings: Any, out: Path, reward_url: str | None = None,
             script: str = "bench.vs_trl") -> SideResult:
    """``side`` in a child process of its own (``script`` with --child); ``settings`` is the
    script's settings dataclass, with `threads`."""
    out.mkdir(parents=True, exist_ok=True)
    spec = {"side": side, "out": str(out), "reward_url": reward_url, "settings": asdict(settings)}
    threads = str(settings.threads)
    environment = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads,
                   "TOKENIZERS_PARALLELISM": "false"}
    log = out / "side.log"  # TRL prints every step's logs; neither side's output is the report
    with log.open("wb") as output:
        finished = subprocess.run(
            [sys.executable, "-m", script, "--child", json.dumps(spec)], check=False,
            cwd=REPO, env=environment, stdout=output, stderr=subprocess.STDOUT)
    if finished.returncode:
        raise RuntimeError(f"the {side} side failed:\n{log.read_text(errors='replace')[-4000:]}")
    data = json.loads((out / "result.json").read_text())
    data["steps"] = [Step(**step) for step in data["steps"]]
    return SideResult(**data)


def run_alignd_side(settings: Settings, out: Path) -> SideResult:
    """alignd's side with a reward service of its own, whose CPU time and peak RSS it adds."""
    with reward_service(out) as (url, pid):
        cpu_before = cpu_seconds(pid)
        result = run_side("alignd", settings, out, url)
        result.reward_cpu_seconds = cpu_seconds(pid) - cpu_before
        result.reward_rss_bytes = vm_hwm(pid)
    return result


@contextmanager
def reward_service(scratch: Path) -> Iterator[tuple[str, int]]:
    """`alignd serve reward` (URL, pid) on a throwaway database, without API keys (as the
    tests run it)."""
    from services.web import free_port

    with fresh_database("alignd_bench_trl") as database_url:
        port = free_port()
        env = {"ALIGND_ENVIRONMENT": "test", "ALIGND_DATABASE_URL": database_url,
               "ALIGND_PORT": str(port), "ALIGND_REQUIRE_API_KEY": "false",
               "ALIGND_TORCH_THREADS": "1", "ALIGND_LOG_LEVEL": "WARNING"}
        with ServiceProcess.alignd(["serve", "reward"], env, scratch / "reward.log") as process:
            url = f"http://127.0.0.1:{port}"
            wait_healthy(url, alive=process.alive)
            assert process.process is not None
            yield url, process.process.pid


def cpu_seconds(pid: int) -> float:
    """User and system CPU seconds of a live process so far (/proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def vm_hwm(pid: int) -> int:
    """Peak resident set size of a live process, in bytes (/proc/<pid>/status VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def compare(settings: Settings, repeats: int) -> dict[str, list[SideResult]]:
    """Each side `repeats` times, each run in a process of its own, the order alternating."""
    results: dict[str, list[SideResult]] = {side: [] for side in SIDES}
    with scratch_dir("alignd-bench-trl-") as scratch:
        for repeat in range(repeats):
            for side in SIDES if repeat % 2 == 0 else SIDES[::-1]:
                out = scratch / f"{side}-{repeat}"
                results[side].append(run_alignd_side(settings, out) if side == "alignd"
                                     else run_side(side, settings, out))
    return results


# --- report ---------------------------------------------------------------------------------


PARTS = ("generate", "reward", "update")


def report(settings: Settings, results: dict[str, list[SideResult]]) -> None:
    def median(side: str, value: Callable[[SideResult], float]) -> float:
        return statistics.median(value(r) for r in results[side])

    print(f"\n{settings.steps} steps ({settings.steps - 1} measured) of "
          f"{settings.prompts_per_step} prompts x {settings.group_size} completions, "
          f"max_new_tokens {settings.max_new_tokens}, micro-batch {settings.micro_batch_size}, "
          f"lr {settings.learning_rate:g}, torch {settings.threads} thread(s), model "
          f"{settings.model} ({parameters(settings.model)}); "
          f"{len(results['alignd'])} run(s) per side, medians")
    rows = []
    for side in SIDES:
        reward_rss = median(side, lambda r: r.reward_rss_bytes) / 2**20
        rows.append([
            side, median(side, lambda r: r.samples_per_second),
            median(side, lambda r: r.tokens_per_second), median(side, lambda r: r.seconds_per_step),
            *(median(side, lambda r, n=n: r.split(n)) for n in PARTS),  # type: ignore[misc]
            median(side, lambda r: r.seconds_per_step - sum(r.split(n) for n in PARTS)),
            median(side, lambda r: r.cpu_per_step),
            f"{median(side, lambda r: r.peak_rss_bytes) / 2**20:,.0f}"
            + (f" + {reward_rss:,.0f}" if reward_rss else ""),
            statistics.mean(x for r in results[side] for x in r.reward_means)])
    print_table(["side", "samples/s", "tokens/s", "s/step", "generate s", "reward s", "update s",
                 "rest s", "CPU s/step", "peak RSS MiB", "mean reward"], rows)
    for side in SIDES:
        runs = ", ".join(f"{r.samples_per_second:.1f}" for r in results[side])
        print(f"{side} samples/s by run: {runs}")
        print(f"{side} paths: {'; '.join(results[side][0].paths)}")
    samples, tokens, memory = (
        ratio(median("alignd", value), median("trl", value)) for value in (
            lambda r: r.samples_per_second, lambda r: r.tokens_per_second,
            lambda r: r.peak_rss_bytes))
    print(f"alignd/trl: samples/s {samples:.2f}x (goal >= 1.5x: "
          f"{'met' if samples >= 1.5 else 'not met'}), tokens/s {tokens:.2f}x, peak RSS "
          f"{memory:.2f}x (trainer processes; + is the reward service's own)")
    options = {k: v for k, v in trl_options(settings, "-").items()
               if k not in ("output_dir", "report_to", "disable_tqdm", "logging_steps")}
    print(f"TRL GRPOConfig: {json.dumps(options)}")
    print(f"alignd hyperparameters (grpo): {json.dumps(alignd_hyperparameters(settings))}")
    print(f"alignd reward spec: {json.dumps(REWARD)}")


# --- command line ---------------------------------------------------------------------------


def parse_arguments() -> tuple[argparse.Namespace, Settings]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=11,
                        help="steps per side, the first a warm-up (11)")
    parser.add_argument("--group-size", type=int, default=4, help="completions per prompt (4)")
    parser.add_argument("--prompts-per-step", type=int, default=8, help="(8)")
    parser.add_argument("--max-new-tokens", type=int, default=16, help="(16)")
    parser.add_argument("--micro-batch-size", type=int, default=32,
                        help="sequences per forward pass; divides the step's completions (32)")
    parser.add_argument("--learning-rate", type=float, default=1e-5, help="(1e-5)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads, both sides (1)")
    parser.add_argument("--repeats", type=int, default=1,
                        help="runs per side, the order alternating (1)")
    parser.add_argument("--model", choices=MODELS, default="demo",
                        help="the policy: the demo's Llama, a real-style family's tiny "
                             "pretrained checkpoint, or qwen2-large (demo)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    completions = args.prompts_per_step * args.group_size
    micro = min(args.micro_batch_size, completions)
    if args.steps < 2:
        parser.error("--steps must be at least 2: the first step is a warm-up")
    if completions % micro:
        parser.error(f"--micro-batch-size ({micro}) must divide the step's completions "
                     f"(prompts_per_step x group_size = {completions}): TRL accumulates "
                     "whole micro-batches")
    return args, Settings(steps=args.steps, group_size=args.group_size,
                          prompts_per_step=args.prompts_per_step,
                          max_new_tokens=args.max_new_tokens, micro_batch_size=micro,
                          learning_rate=args.learning_rate, threads=args.threads,
                          model=args.model)


def main() -> None:
    chooser = argparse.ArgumentParser(add_help=False)
    chooser.add_argument("--method", choices=("grpo", "dpo"), default="grpo")
    chosen, rest = chooser.parse_known_args()
    if chosen.method == "dpo":  # DPOTrainer against the dpo job loop: bench/vs_trl_dpo.py
        from bench.vs_trl_dpo import main as dpo_main

        dpo_main(rest)
        return
    sys.argv[1:] = rest
    args, settings = parse_arguments()
    if args.child:
        child_main(args.child)
        return
    import torch

    torch.set_num_threads(settings.threads)  # as each side does; machine_info reports it
    bench_world(settings.model)  # built once (minutes) before either side starts its clock
    print(f"machine: {machine_info()}")
    report(settings, compare(settings, args.repeats))


if __name__ == "__main__":
    main()
