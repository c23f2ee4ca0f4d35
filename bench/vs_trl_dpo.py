"""DPO throughput: alignd's `dpo` job loop against TRL's `DPOTrainer` (`python -m bench.vs_trl
--method dpo` runs this; `python -m bench.vs_trl_dpo` too).

Both sides train the demo world's pretrained tiny Llama on the demo's preference pairs
(`{"prompt", "chosen", "rejected"}`, 2,000 rows) with the same loss (sigmoid DPO), β, batch of
pairs, learning rate, optimizer, sequence length cap, float32 and torch thread count:

  alignd  `trainer.methods.dpo.DpoTrainer` on a list-backed `TrainingContext`, as a job runs it.
  trl     `trl.DPOTrainer` (pinned by the `bench` extra) on CPU.

The reference's log-probabilities are precomputed on both sides, over all 2,000 pairs, before
the first step: alignd always does (`reference_logps.pt`), TRL with
`precompute_ref_log_probs=True`. That one-time pass is in "setup s" (from the trainer's
construction to the end of its first step), not in the rates.

  pairs/s      preference pairs trained per second of wall time, from the end of the first
               step (a warm-up, excluded) to the end of the last
  tokens/s     prompt and response tokens of both sequences of every pair (no padding), same
               steps
  setup s      constructing the trainer (tokenizing, loading, the reference pass) and its
               first step
  peak RSS     `ru_maxrss` of the side's process

    python -m bench.vs_trl --method dpo --repeats 3          # 40 steps of 16 pairs, 1 thread
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from bench._harness import machine_info, print_table, ratio, scratch_dir
from bench.vs_trl import SEED, SIDES, SideResult, Step, demo_world, peak_rss, run_side


@dataclass(frozen=True)
class DpoSettings:
    steps: int
    """Steps per side; the first is a warm-up, excluded from the rates."""
    batch_size: int
    """Pairs per step, one micro-batch (TRL: per_device_train_batch_size)."""
    beta: float
    max_length: int
    """Most tokens of prompt + response (alignd: max_seq_length; TRL: max_length, keep_start)."""
    learning_rate: float
    threads: int


def trl_options(settings: DpoSettings, output_dir: str) -> dict[str, Any]:
    """DPOConfig's arguments: alignd's dpo defaults (sigmoid loss, no label smoothing, AdamW
    fused without weight decay, gradient norm clipped at 1) in TRL's names, the learning rate
    constant."""
    return {
        "output_dir": output_dir, "use_cpu": True, "bf16": False,
        "gradient_checkpointing": False, "seed": SEED, "report_to": "none",
        "save_strategy": "no", "logging_steps": 1, "disable_tqdm": True,
        "max_steps": settings.steps, "per_device_train_batch_size": settings.batch_size,
        "gradient_accumulation_steps": 1, "beta": settings.beta, "loss_type": ["sigmoid"],
        "label_smoothing": 0.0, "max_length": settings.max_length,
        "truncation_mode": "keep_start", "precompute_ref_log_probs": True,
        "precompute_ref_batch_size": settings.batch_size,
        "learning_rate": settings.learning_rate, "lr_scheduler_type": "constant",
        "warmup_steps": 0, "weight_decay": 0.0, "max_grad_norm": 1.0,
        "optim": "adamw_torch_fused", "dataloader_num_workers": 0,
        "model_init_kwargs": {"dtype": "float32"},
    }


def alignd_hyperparameters(settings: DpoSettings) -> dict[str, Any]:
    """The dpo method's hyperparameters (its defaults otherwise: sigmoid, AdamW, clip 1)."""
    return {"loss": "sigmoid", "beta": settings.beta, "batch_size": settings.batch_size,
            "max_steps": settings.steps, "n_epochs": 100, "learning_rate": settings.learning_rate,
            "lr_scheduler": "constant", "max_seq_length": settings.max_length,
            "checkpoint_every": 10**6}


# --- the sides ------------------------------------------------------------------------------


def run_alignd(settings: DpoSettings, model_path: Path, rows: list[dict[str, Any]],
               out: Path) -> SideResult:
    from services.methods import Method
    from trainer.context import TrainingContext
    from trainer.methods.dpo import DpoTrainer

    steps: list[Step] = [Step(time.perf_counter(), time.process_time(), 0, 0, {})]

    def report_metrics(step: int, metrics: dict[str, float]) -> None:
        tokens = round(metrics["tokens_per_second"] * metrics["step_seconds"])
        steps.append(Step(time.perf_counter(), time.process_time(), settings.batch_size, tokens,
                          {}))

    method = Method.model_validate({"type": "dpo", "dpo": {
        "hyperparameters": alignd_hyperparameters(settings)}})
    ctx = TrainingContext(
        job_id="bench-vs-trl-dpo", base_model_path=model_path, training_rows=rows,
        validation_rows=None, hyperparameters=method.hyperparameters, seed=SEED,
        output_dir=out / "model", checkpoint_root=out / "checkpoints",
        report_metrics=report_metrics)
    DpoTrainer(ctx).run_steps()
    return SideResult("alignd", steps, peak_rss())


class TrlDpoClock(TrainerCallback):
    """DPOTrainer's optimizer steps as `Step`s; the tokens are the batch's attention mask."""

    def __init__(self, pairs_per_step: int) -> None:
        self.pairs_per_step = pairs_per_step
        self.steps = [Step(time.perf_counter(), time.process_time(), 0, 0, {})]
        self.tokens = 0

    def counting(self, compute_loss: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(model: Any, inputs: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
            self.tokens += int(inputs["attention_mask"].sum())
            return compute_loss(model, inputs, *args, **kwargs)
        return wrapper

    def on_step_end(self, *_: Any, **__: Any) -> None:
        self.steps.append(Step(time.perf_counter(), time.process_time(), self.pairs_per_step,
                               self.tokens, {}))
        self.tokens = 0


def run_trl(settings: DpoSettings, model_path: Path, rows: list[dict[str, Any]],
            out: Path) -> SideResult:
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    clock = TrlDpoClock(settings.batch_size)
    trainer = DPOTrainer(
        model=str(model_path), args=DPOConfig(**trl_options(settings, str(out / "trl"))),
        train_dataset=Dataset.from_list(rows),
        processing_class=AutoTokenizer.from_pretrained(model_path), callbacks=[clock])
    trainer.compute_loss = clock.counting(trainer.compute_loss)  # type: ignore[method-assign]
    trainer.train()
    return SideResult("trl", clock.steps, peak_rss())


def setup_seconds(result: SideResult) -> float:
    """From the trainer's construction (steps[0]) to the end of the first step."""
    return result.steps[1].ended - result.steps[0].ended


def measured(result: SideResult) -> list[Step]:
    return result.steps[2:]


def pairs_per_second(result: SideResult) -> float:
    steps = measured(result)
    return sum(s.samples for s in steps) / (steps[-1].ended - result.steps[1].ended)


def tokens_per_second(result: SideResult) -> float:
    steps = measured(result)
    return sum(s.response_tokens for s in steps) / (steps[-1].ended - result.steps[1].ended)


# --- one side per process -------------------------------------------------------------------


def child_main(spec: str) -> None:
    import torch

    job = json.loads(spec)
    settings, out = DpoSettings(**job["settings"]), Path(job["out"])
    torch.set_num_threads(settings.threads)
    world = demo_world()
    rows = [json.loads(line) for line in world.preference.read_text().splitlines() if line]
    run = run_alignd if job["side"] == "alignd" else run_trl
    result = run(settings, world.base_model, rows, out)
    (out / "result.json").write_text(json.dumps(asdict(result)))


def compare(settings: DpoSettings, repeats: int) -> dict[str, list[SideResult]]:
    results: dict[str, list[SideResult]] = {side: [] for side in SIDES}
    with scratch_dir("alignd-bench-trl-dpo-") as scratch:
        for repeat in range(repeats):
            for side in SIDES if repeat % 2 == 0 else SIDES[::-1]:
                results[side].append(run_side(side, settings, scratch / f"{side}-{repeat}",
                                              script="bench.vs_trl_dpo"))
    return results


def report(settings: DpoSettings, results: dict[str, list[SideResult]]) -> None:
    def median(side: str, value: Callable[[SideResult], float]) -> float:
        return statistics.median(value(r) for r in results[side])

    print(f"\n{settings.steps} steps ({settings.steps - 1} measured) of {settings.batch_size} "
          f"pairs, sigmoid DPO, beta {settings.beta:g}, max length {settings.max_length}, lr "
          f"{settings.learning_rate:g}, float32, torch {settings.threads} thread(s), reference "
          f"log-probabilities precomputed on both sides; {len(results['alignd'])} run(s) per "
          f"side, medians")
    print_table(["side", "pairs/s", "tokens/s", "s/step", "setup s", "peak RSS MiB"], [
        [side, median(side, pairs_per_second), median(side, tokens_per_second),
         median(side, lambda r: settings.batch_size / pairs_per_second(r)),
         median(side, setup_seconds), f"{median(side, lambda r: r.peak_rss_bytes) / 2**20:,.0f}"]
        for side in SIDES])
    for side in SIDES:
        runs = ", ".join(f"{pairs_per_second(r):.1f}" for r in results[side])
        print(f"{side} pairs/s by run: {runs}")
    pairs, tokens, memory = (ratio(median("alignd", value), median("trl", value)) for value in (
        pairs_per_second, tokens_per_second, lambda r: r.peak_rss_bytes))
    print(f"alignd/trl: pairs/s {pairs:.2f}x (goal >= 1.2x: {'met' if pairs >= 1.2 else 'not met'})"
          f", tokens/s {tokens:.2f}x (each side counts its own tokens), peak RSS {memory:.2f}x")
    options = {k: v for k, v in trl_options(settings, "-").items()
               if k not in ("output_dir", "report_to", "disable_tqdm", "logging_steps")}
    print(f"TRL DPOConfig: {json.dumps(options)}")
    print(f"alignd hyperparameters (dpo): {json.dumps(alignd_hyperparameters(settings))}")


def parse_arguments(argv: list[str] | None = None) -> tuple[argparse.Namespace, DpoSettings]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=41,
                        help="steps per side, the first a warm-up (41)")
    parser.add_argument("--batch-size", type=int, default=16, help="pairs per step (16)")
    parser.add_argument("--beta", type=float, default=0.1, help="(0.1)")
    parser.add_argument("--max-length", type=int, default=64, help="(64)")
    parser.add_argument("--learning-rate", type=float, default=1e-5, help="(1e-5)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads, both sides (1)")
    parser.add_argument("--repeats", type=int, default=1,
                        help="runs per side, the order alternating (1)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.steps < 3:
        parser.error("--steps must be at least 3: the first step is a warm-up")
    return args, DpoSettings(steps=args.steps, batch_size=args.batch_size, beta=args.beta,
                             max_length=args.max_length, learning_rate=args.learning_rate,
                             threads=args.threads)


def main(argv: list[str] | None = None) -> None:
    args, settings = parse_arguments(argv)
    if args.child:
        child_main(args.child)
        return
    import torch

    torch.set_num_threads(settings.threads)
    demo_world()  # built once before either side starts its clock
    print(f"machine: {machine_info()}")
    report(settings, compare(settings, args.repeats))


if __name__ == "__main__":
    main()
