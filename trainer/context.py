"""What a training method receives from the job runner, and how it reports back.

A method is a plain function `run(ctx: TrainingContext) -> TrainingResult`. It never touches
the database or Celery: progress, checkpoints and cancellation all go through the context,
which the runner backs with Postgres (and tests may back with plain lists).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class JobStopped(Exception):
    """Raised inside a method when the job must stop now (cancelled, or the lease was lost)."""


@dataclass(frozen=True)
class RolloutEngine:
    name: str = "batch"
    """"batch": static batches decoded by a lean Llama decoder over the live weights (the torch
    engine for other models); "torch": the torch engine over the live weights; "vllm": vLLM's,
    weights pushed."""
    gpu_memory_utilization: float = 0.3
    """vLLM: the share of the accelerator's memory (on CPU, of RAM) its engine takes."""
    kv_cache_gib: float | None = None
    """vLLM: its KV cache in GiB (recommended on CPU), instead of the share above."""


@dataclass
class TrainingContext:
    job_id: str
    base_model_path: Path
    """Local directory that `from_pretrained` loads (model and tokenizer)."""
    training_rows: list[dict[str, Any]]
    validation_rows: list[dict[str, Any]] | None
    hyperparameters: Any
    """The method's pydantic hyperparameters (e.g. services.methods.SupervisedHyperparameters)."""
    seed: int
    output_dir: Path
    """Where the final model is written with save_pretrained."""
    checkpoint_root: Path
    """Resumable checkpoints go in checkpoint_root / f"step-{step}"."""
    resume_from: Path | None = None
    """The newest complete checkpoint directory when the job is resumed, else None."""
    report_metrics: Callable[[int, dict[str, float]], None] = lambda step, metrics: None
    """Record metric values for an optimizer step (idempotent per (step, name))."""
    on_checkpoint: Callable[[int, Path, dict[str, float]], None] = lambda step, path, m: None
    """Called after a checkpoint directory is completely written."""
    log: Callable[[str], None] = lambda message: None
    """An informational job event."""
    report_total_steps: Callable[[int], None] = lambda steps: None
    """Record the optimizer steps of the whole run (called as the step loop starts)."""
    check_continue: Callable[[], None] = lambda: None
    """Called once per optimizer step; raises JobStopped when the job must stop."""
    base_model: str | None = None
    """The job's `model` id, as the registry knows it (base_model_path is where it lies)."""
    reward_url: str | None = None
    """The reward service (`POST {reward_url}/v1/score`), for methods that score samples."""
    reward_key: str | None = None
    """The service key the worker scores with, on behalf of `project_id`."""
    project_id: str | None = None
    """The job's project: its reward models are the ones a reward spec may name."""
    reward: dict[str, Any] | None = None
    """The reward spec of the job's method section, for methods that score outside their
    hyperparameters (reinforcement)."""
    resolve_model: Callable[[str], Path] | None = None
    """The folder of a registered model the job's project may use (a critic's reward model);
    raises ValueError for one it may not."""
    rollout_engine: RolloutEngine = field(default_factory=lambda: RolloutEngine())
    """The engine online methods sample from."""
    reward_retry_seconds: float = 0.0
    """How long an unavailable reward service is retried (with backoff) before the job fails."""


@dataclass
class TrainingResult:
    output_dir: Path
    trained_tokens: int
    kind: str = "fine_tuned"
    """Registry kind of the output: fine_tuned (full weights), lora_adapter, reward_model, ..."""
    final_metrics: dict[str, float] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    """Extra facts the registry row keeps about the output (e.g. a reward model's objectives)."""
