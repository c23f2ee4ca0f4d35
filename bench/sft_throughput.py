"""Supervised fine-tuning throughput: alignd's supervised method against a plain loop.

What it measures, in one process with the same torch thread count on both sides:

  plain   a hand-written `transformers` loop: AutoModelForCausalLM, AdamW (no weight decay),
          a linear schedule, loss from `labels` with -100 on prompt and padding, gradient
          clipping at 1.0, right-padded batches.
  alignd  `trainer.methods.supervised.run` with a TrainingContext backed by plain lists
          (no database): the method exactly as a job runs it, minus the DB callbacks.

Both train the same model from the same weights on the same rows in the same order (alignd's
seeded order, `trainer.data.stream_rows`), with the same batch size, max_seq_length and
number of steps (one epoch), and count the same tokens: the non-padding tokens of each batch.
After an untimed two-step warm-up of each side, the sides run in an order that changes
every repeat (plain, alignd; alignd, plain; ...) and the median of the repeats is reported.

  loop tok/s   tokens / time of the training steps (alignd: from the first step's
               check_continue to the last step's report_metrics; no checkpoint falls inside)
  run tok/s    tokens / wall time of the whole run: load, tokenize, train, and save (alignd
               also writes its final resumable checkpoint, optimizer state included)

How to read it: `alignd/plain` near 1.0 means the method adds no overhead to the training
step; below 1 is its cost. Two models: the demo's tiny Llama (0.35M parameters, ~10-token
rows, so Python overhead dominates) and a small Llama (hidden 256, 4 layers) on longer
few-shot rows, where the matrix work dominates.

With `--with-db` a third side, `alignd+db`, runs the same method with the job runner's own
per-step database calls (the cancel check and the metrics upsert, `JobRunner._check_continue`
and `JobRunner._metrics`) against a throwaway database, so their cost shows in the same
process: `alignd+db/alignd` below 1 is what writing progress to Postgres every step costs.

With `--e2e` the last config also runs as a real job (api in a thread, Redis, one `alignd
worker` process with the same thread count), and the job's own figures are printed: the
median of its per-step `tokens_per_second` metric, the loop throughput from its metric rows'
timestamps, and trained_tokens over started_at→finished_at. The gap to the in-process loop
is the per-step cost of the database-backed context (cancel check and metric writes).

    python -m bench.sft_throughput --with-db --e2e  # both models, 3 repeats, plus a real job
    python -m bench.sft_throughput --quick          # tiny model only, 10 steps, 1 repeat
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch

from bench._harness import (
    ServiceProcess,
    api_thread,
    client,
    empty_redis_db,
    fresh_database,
    job_body,
    machine_info,
    new_project_key,
    print_table,
    ratio,
    save_model,
    scratch_dir,
    service_env,
    supervised_rows,
    upload_rows,
    wait_for,
    wait_worker_ready,
)

SEED = 0
LEARNING_RATE = 1e-4


@dataclass(frozen=True)
class Config:
    name: str
    model: dict[str, Any]
    """build_model overrides; empty for the demo's tiny Llama."""
    shots: int
    """Solved problems before each prompt (longer rows)."""
    batch_size: int
    max_seq_length: int
    steps: int


CONFIGS = {
    "tiny": Config("tiny", {}, shots=0, batch_size=16, max_seq_length=64, steps=60),
    "small": Config("small", {"hidden_size": 256, "num_hidden_layers": 4,
                              "num_attention_heads": 4, "num_key_value_heads": 4,
                              "intermediate_size": 1024},
                    shots=7, batch_size=16, max_seq_length=128, steps=20),
}


@dataclass
class Timing:
    tokens: int
    loop_seconds: float
    run_seconds: float
    first_loss: float
    step_tokens: list[int] = field(default_factory=list)
    step_rate: float = float("nan")
    """alignd only: median of its per-step tokens_per_second metric (the step's own work)."""

    @property
    def loop_rate(self) -> float:
        return self.tokens / self.loop_seconds

    @property
    def run_rate(self) -> float:
        return self.tokens / self.run_seconds


# --- the two sides --------------------------------------------------------------------------


def plain_loop(model_path: Path, rows: list[dict[str, str]], config: Config,
               out: Path) -> Timing:
    """A plain transformers training loop, written the way one usually is."""
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        get_linear_schedule_with_warmup,
        set_seed,
    )

    from trainer.data import stream_rows

    started = time.perf_counter()
    set_seed(SEED)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    model.train()
    examples = [encode(tokenizer, row, config.max_seq_length) for row in rows]
    order = stream_rows(len(rows), SEED, 0, len(rows))
    optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, weight_decay=0.0)
    scheduler = get_linear_schedule_with_warmup(optimizer, 0, config.steps)
    losses, step_tokens = [], []
    loop_started = time.perf_counter()
    for step in range(config.steps):
        indices = order[step * config.batch_size:(step + 1) * config.batch_size]
        input_ids, attention_mask, labels = pad([examples[i] for i in indices],
                                                tokenizer.pad_token_id)
        loss = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        step_tokens.append(int(attention_mask.sum()))
    loop_seconds = time.perf_counter() - loop_started
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return Timing(sum(step_tokens), loop_seconds, time.perf_counter() - started, losses[0],
                  step_tokens)


def encode(tokenizer: Any, row: dict[str, str], max_length: int) -> tuple[list[int], list[int]]:
    prompt = tokenizer(row["prompt"])["input_ids"]
    completion = tokenizer(row["completion"], add_special_tokens=False)["input_ids"]
    completion = [*completion, tokenizer.eos_token_id]
    ids, labels = prompt + completion, [-100] * len(prompt) + completion
    return ids[:max_length], labels[:max_length]


def pad(batch: list[tuple[list[int], list[int]]],
        pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    length = max(len(ids) for ids, _ in batch)
    input_ids = torch.full((len(batch), length), pad_id)  # (B, T)
    attention_mask = torch.zeros((len(batch), length), dtype=torch.long)  # (B, T)
    labels = torch.full((len(batch), length), -100)  # (B, T)
    for row, (ids, target) in enumerate(batch):
        input_ids[row, :len(ids)] = torch.tensor(ids)
        attention_mask[row, :len(ids)] = 1
        labels[row, :len(ids)] = torch.tensor(target)
    return input_ids, attention_mask, labels


def alignd_method(model_path: Path, rows: list[dict[str, str]], config: Config, out: Path,
                  database: DatabaseCallbacks | None = None) -> Timing:
    """trainer.methods.supervised.run on a TrainingContext backed by plain lists, or with
    `database`, by the job runner's own per-step database calls."""
    from services.methods import SupervisedHyperparameters
    from trainer.context import TrainingContext
    from trainer.methods.supervised import run

    marks: dict[str, float] = {}
    metrics: list[dict[str, float]] = []
    job_id = database.new_job() if database else "bench"

    def step_starts() -> None:
        marks.setdefault("loop_started", time.perf_counter())
        if database:
            database.check_continue(job_id)

    def step_done(step: int, values: dict[str, float]) -> None:
        if database:
            database.report_metrics(job_id, step, values)
        marks["loop_done"] = time.perf_counter()
        metrics.append(values)

    hyperparameters = SupervisedHyperparameters(
        batch_size=config.batch_size, max_seq_length=config.max_seq_length,
        max_steps=config.steps, learning_rate=LEARNING_RATE, checkpoint_every=10**6)
    ctx = TrainingContext(
        job_id=job_id, base_model_path=model_path, training_rows=rows, validation_rows=None,
        hyperparameters=hyperparameters, seed=SEED, output_dir=out / "model",
        checkpoint_root=out / "checkpoints", report_metrics=step_done,
        check_continue=step_starts)
    started = time.perf_counter()
    result = run(ctx)
    return Timing(result.trained_tokens, marks["loop_done"] - marks["loop_started"],
                  time.perf_counter() - started, metrics[0]["train_loss"],
                  step_rate=statistics.median(m["tokens_per_second"] for m in metrics))


class DatabaseCallbacks:
    """What a job's context does every step, from trainer.runner: JobRunner's `_check_continue`
    (flags set by the lease heartbeat and the cancel listener) and a MetricsBuffer (written to
    PostgreSQL at most once a second), each on a job row of its own in a throwaway database."""

    def __init__(self, database_url: str):
        import threading
        from types import SimpleNamespace

        from services.db.engine import session_factory
        from trainer.runner import MetricsBuffer

        self.sessions = session_factory(database_url)
        self.buffers: dict[str, MetricsBuffer] = {}
        self.make_buffer = lambda job_id: MetricsBuffer(self.sessions, job_id)
        self.heartbeat = SimpleNamespace(lost=threading.Event(), cancelled=threading.Event())
        self.project_id = f"proj-bench-{time.time_ns()}"
        with self.sessions.begin() as session:
            from services.db.models import Project

            session.add(Project(id=self.project_id, name=self.project_id))

    def new_job(self) -> str:
        from services.db.models import Job
        from services.ids import new_id

        job_id = new_id("ftjob")
        with self.sessions.begin() as session:
            session.add(Job(id=job_id, project_id=self.project_id, model="bench",
                            training_file="file-bench", seed=SEED,
                            method={"type": "supervised"}, status="running",
                            lease_owner="bench"))
        self.buffers[job_id] = self.make_buffer(job_id)
        return job_id

    def check_continue(self, job_id: str) -> None:
        from trainer.runner import JobRunner

        JobRunner._check_continue(job_id, self.heartbeat)  # type: ignore[arg-type]

    def report_metrics(self, job_id: str, step: int, values: dict[str, float]) -> None:
        self.buffers[job_id].add(step, values)


Side = Callable[[Path, list[dict[str, str]], Config, Path], Timing]


def compare(config: Config, scratch: Path, repeats: int,
            database_url: str | None) -> dict[str, list[Timing]]:
    """Each side `repeats` times, in an order that rotates every repeat."""
    model_path = save_model(scratch / f"model-{config.name}", **config.model)
    rows = supervised_rows(config.steps * config.batch_size, seed=1, shots=config.shots)
    sides: dict[str, Side] = {"plain": plain_loop, "alignd": alignd_method}
    if database_url:
        sides["alignd+db"] = partial(alignd_method, database=DatabaseCallbacks(database_url))
    warm_up = Config(**{**config.__dict__, "steps": 2})  # first-touch allocations, untimed
    for name, side in sides.items():
        side(model_path, rows[:2 * config.batch_size], warm_up, scratch / f"warm-{name}")
    timings: dict[str, list[Timing]] = {name: [] for name in sides}
    names = list(sides)
    for repeat in range(repeats):
        shift = repeat % len(names)
        for name in (names[shift:] + names[:shift])[::1 if repeat % 2 == 0 else -1]:
            timings[name].append(sides[name](model_path, rows, config,
                                             scratch / f"out-{name}-{repeat}"))
    tokens = {name: runs[0].tokens for name, runs in timings.items()}
    if len(set(tokens.values())) != 1:
        raise AssertionError(f"token counts differ: {tokens}")
    return timings


# --- the real job path ----------------------------------------------------------------------


@dataclass
class JobFigures:
    metric_rate: float
    """Median of the job's per-step tokens_per_second metric."""
    loop_rate: float
    """Tokens of steps 2..N over the time between step 1's and step N's metric rows."""
    job_rate: float
    """trained_tokens / (finished_at − started_at)."""
    callback_ms: dict[str, float]
    """Milliseconds per call of the runner's per-step database callbacks, timed here."""


def real_job(config: Config, scratch: Path, threads: int, step_tokens: list[int]) -> JobFigures:
    """The same training as a job (api in a thread, Redis, one worker process), after a
    one-step warm-up job that pays the worker's first torch import."""
    from sqlalchemy import select

    from services.db.engine import session_factory
    from services.db.models import Job, JobMetric

    model_path = save_model(scratch / f"job-model-{config.name}", **config.model)
    rows = supervised_rows(config.steps * config.batch_size, seed=1, shots=config.shots)
    with fresh_database() as database_url, empty_redis_db() as redis_url:
        env = service_env(database_url, redis_url, scratch / "job-data", model_path)
        worker_env = {**env, "ALIGND_LOG_LEVEL": "INFO", "ALIGND_TORCH_THREADS": str(threads)}
        with api_thread(env) as api, ServiceProcess.alignd(
                ["worker"], worker_env, scratch / "worker.log") as worker:
            wait_worker_ready(worker)
            with client(api.url, new_project_key(api.url)) as http:
                training_file = upload_rows(http, rows)
                for max_steps in (1, config.steps):  # warm-up, then the measured job
                    body = job_body(training_file, batch_size=config.batch_size,
                                    max_seq_length=config.max_seq_length, max_steps=max_steps,
                                    learning_rate=LEARNING_RATE, checkpoint_every=10**6)
                    job_id = http.post("/v1/fine_tuning/jobs", json=body).json()["id"]
                    job = wait_for(partial(_finished, http, job_id), 600, interval=0.2,
                                   what=f"job {job_id}")
                    if job["status"] != "succeeded":
                        raise RuntimeError(f"job {job_id}: {job}\n{worker.log_tail()}")
        sessions = session_factory(database_url)
        with sessions() as session:
            row = session.get(Job, job_id)
            assert row is not None and row.started_at and row.finished_at
            job_seconds = (row.finished_at - row.started_at).total_seconds()
            points = list(session.execute(
                select(JobMetric.step, JobMetric.value, JobMetric.created_at)
                .where(JobMetric.job_id == job_id, JobMetric.name == "tokens_per_second")
                .order_by(JobMetric.step)))
            trained_tokens = row.trained_tokens or 0
        callback_ms = time_callbacks(database_url)
    loop_seconds = (points[-1].created_at - points[0].created_at).total_seconds()
    return JobFigures(metric_rate=statistics.median(p.value for p in points),
                      loop_rate=sum(step_tokens[1:]) / loop_seconds,
                      job_rate=trained_tokens / job_seconds, callback_ms=callback_ms)


def time_callbacks(database_url: str, samples: int = 50) -> dict[str, float]:
    """Milliseconds per call of the two per-step database calls, on a fresh job row in the
    job's database, right after the job (same Postgres, same moment)."""
    database = DatabaseCallbacks(database_url)
    job_id = database.new_job()
    values = {"train_loss": 1.0, "learning_rate": 1e-4, "tokens_per_second": 1.0,
              "grad_norm": 1.0, "epoch": 0.5}
    started = time.perf_counter()
    for _ in range(samples):
        database.check_continue(job_id)
    check_ms = (time.perf_counter() - started) / samples * 1000
    started = time.perf_counter()
    for step in range(1, samples + 1):
        database.report_metrics(job_id, step, values)
    return {"check_continue": check_ms,
            "report_metrics": (time.perf_counter() - started) / samples * 1000}


def _finished(http: Any, job_id: str) -> dict[str, Any] | None:
    job = http.get(f"/v1/fine_tuning/jobs/{job_id}").json()
    return job if job["status"] in ("succeeded", "failed", "cancelled") else None


# --- report ---------------------------------------------------------------------------------


def report(config: Config, timings: dict[str, list[Timing]]) -> None:
    def median(name: str, value: Callable[[Timing], float]) -> float:
        return statistics.median(value(t) for t in timings[name])

    plain, ours = timings["plain"], timings["alignd"]
    print(f"\n[{config.name}] {config.steps} steps x batch {config.batch_size}, "
          f"max_seq_length {config.max_seq_length}, {plain[0].tokens} tokens per run, "
          f"{len(plain)} repeats; first-step loss plain {plain[0].first_loss:.4f}, "
          f"alignd {ours[0].first_loss:.4f}")
    print_table(["side", "loop tok/s", "run tok/s", "loop s", "run s", "step-metric tok/s"], [
        [name, median(name, lambda t: t.loop_rate), median(name, lambda t: t.run_rate),
         median(name, lambda t: t.loop_seconds), median(name, lambda t: t.run_seconds),
         "-" if name == "plain" else median(name, lambda t: t.step_rate)]
        for name in timings])
    p_loop, p_run = median("plain", lambda t: t.loop_rate), median("plain", lambda t: t.run_rate)
    for name in timings:
        if name != "plain":
            print(f"{name}/plain: loop {ratio(median(name, lambda t: t.loop_rate), p_loop):.2f}x,"
                  f" whole run {ratio(median(name, lambda t: t.run_rate), p_run):.2f}x")
    if "alignd+db" in timings:
        extra = (median("alignd+db", lambda t: t.loop_seconds)
                 - median("alignd", lambda t: t.loop_seconds)) / config.steps * 1000
        ours_loop = median("alignd", lambda t: t.loop_rate)
        with_db = median("alignd+db", lambda t: t.loop_rate)
        print(f"alignd+db/alignd: loop {ratio(with_db, ours_loop):.2f}x; the database callbacks "
              f"add {extra:.1f} ms per step")


def report_job(config: Config, timings: dict[str, list[Timing]], job: JobFigures,
               threads: int) -> None:
    plain, ours = timings["plain"], timings["alignd"]
    p_loop = statistics.median(t.loop_rate for t in plain)
    a_loop = statistics.median(t.loop_rate for t in ours)
    steps = config.steps - 1
    overhead_ms = (sum(plain[0].step_tokens[1:]) / job.loop_rate
                   - sum(plain[0].step_tokens[1:]) / a_loop) / steps * 1000
    print(f"\n[{config.name}] as a real job (api + Redis + worker, {threads} torch threads):")
    print_table(["figure", "tok/s", "/ plain loop", "/ alignd in-process loop"], [
        [name, rate, ratio(rate, p_loop), ratio(rate, a_loop)] for name, rate in (
            ("median per-step tokens_per_second metric", job.metric_rate),
            ("loop, from metric row timestamps", job.loop_rate),
            ("trained_tokens / (finished_at - started_at)", job.job_rate))])
    print(f"per-step time the job spends beyond the in-process loop: {overhead_ms:.1f} ms; "
          f"its database callbacks timed alone: check_continue "
          f"{job.callback_ms['check_continue']:.1f} ms + report_metrics "
          f"{job.callback_ms['report_metrics']:.1f} ms per step")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="tiny model, 10 steps, 1 repeat (< 60 s)")
    parser.add_argument("--models", nargs="+", choices=sorted(CONFIGS), default=None,
                        help="configs to run (default: tiny small; quick: tiny)")
    parser.add_argument("--steps", type=int, default=None, help="override steps per run")
    parser.add_argument("--repeats", type=int, default=None, help="runs per side (3; quick 1)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads, both sides")
    parser.add_argument("--e2e", action="store_true",
                        help="also run the last config as a real job (api + worker)")
    parser.add_argument("--with-db", action="store_true",
                        help="add a side: alignd with the job runner's per-step database calls")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    names = args.models or (["tiny"] if args.quick else ["tiny", "small"])
    repeats = args.repeats or (1 if args.quick else 3)
    steps = args.steps or (10 if args.quick else None)
    print(f"machine: {machine_info()}")
    with scratch_dir("alignd-bench-sft-") as scratch, ExitStack() as resources:
        database_url = resources.enter_context(fresh_database()) if args.with_db else None
        last: tuple[Config, dict[str, list[Timing]]] | None = None
        for name in names:
            config = CONFIGS[name]
            if steps:
                config = Config(**{**config.__dict__, "steps": steps})
            timings = compare(config, scratch, repeats, database_url)
            report(config, timings)
            last = (config, timings)
        if args.e2e and last is not None:
            config, timings = last
            job = real_job(config, scratch, args.threads, timings["plain"][0].step_tokens)
            report_job(config, timings, job, args.threads)


if __name__ == "__main__":
    main()
