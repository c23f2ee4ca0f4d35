"""`alignd demo`: build the demo world, start the embedded stack, fine-tune the demo model
through the HTTP api, show held-out exact-match accuracy before and after, ask both models
a few held-out problems through the inference service, improve the fine-tuned model further
with GRPO against the task's grader (held-out exact match before and after), then train a
reward model on the preference pairs and show how well it ranks held-out pairs through the
reward service."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from cli.stack import Stack, embedded_stack, stop_on_signals
from cli.stack_lock import StackError
from cli.user import fail
from services.client import AlignClient, ApiError
from services.settings import AlignSettings

DEMO_MODEL = "alignd-demo-tiny"
DEMO_PROJECT = "demo"


def _progress(console: Console) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/"
                    "{task.total}"), TimeElapsedColumn(), console=console)


def _build_world(console: Console, demo_dir: Path | None, pretrain_steps: int | None) -> Any:
    from trainer.demo_world import build_demo_world, default_demo_root

    with _progress(console) as progress:
        task = progress.add_task("demo world: pretraining the tiny model", total=None)

        def report(step: int, total: int, loss: float) -> None:
            progress.update(task, completed=step, total=total,
                            description=f"demo world: pretraining (loss {loss:.3f})")

        return build_demo_world(demo_dir or default_demo_root(), pretrain_steps=pretrain_steps,
                                progress=report)


def _project_key(settings: AlignSettings) -> str:
    with AlignClient(settings.api_url, settings.admin_key.get_secret_value()) as admin:
        try:
            project = admin.create_project(DEMO_PROJECT)
        except ApiError as exc:
            if exc.status_code != 409:
                raise
            project = next(p for p in admin.list_projects() if p["name"] == DEMO_PROJECT)
        return admin.create_api_key(project["id"], name="demo")["key"]


def _follow(client: AlignClient, job_id: str, steps: int, console: Console,
            label: str = "fine-tuning", metric: str = "train_loss") -> dict[str, Any]:
    """Print the job's events and drive a progress bar from one of its metric series."""
    job: dict[str, Any] = {}
    with _progress(console) as progress:
        task = progress.add_task(label, total=steps)
        for event, job in client.follow(job_id):
            if event is not None:
                if event["type"] != "checkpoint":
                    progress.console.log(event["message"])
                continue
            _show_metric(client, job_id, progress, task, label, metric)
        _show_metric(client, job_id, progress, task, label, metric)
    return job


def _show_metric(client: AlignClient, job_id: str, progress: Progress, task: TaskID,
                 label: str, metric: str) -> None:
    series = client.metrics(job_id, [metric])
    if series:
        name = metric.replace("train_loss", "loss").replace("_", " ")
        progress.update(task, completed=series[0]["steps"][-1],
                        description=f"{label} ({name} {series[0]['values'][-1]:.3f})")


def _fine_tune(client: AlignClient, world: Any, steps: int, console: Console) -> dict[str, Any]:
    training = client.upload_file(world.supervised, "supervised")
    validation = client.upload_file(world.supervised_validation, "supervised")
    console.print(f"uploaded {training['id']} ({training['line_count']} rows) and "
                  f"{validation['id']} ({validation['line_count']} rows)")
    hyperparameters = {"max_steps": steps, "n_epochs": 100, "batch_size": 32,
                       "learning_rate": 1e-3, "eval_every": 50, "checkpoint_every": 50}
    job = client.create_job(model=DEMO_MODEL, training_file=training["id"],
                            validation_file=validation["id"], suffix="demo", seed=0,
                            method={"type": "supervised",
                                    "supervised": {"hyperparameters": hyperparameters}})
    console.print(f"created job [bold]{job['id']}[/]")
    return _follow(client, job["id"], steps, console)


EXACT_ANSWER = {"type": "string_check", "name": "exact", "operation": "eq",
                "input": "{{sample.output_text}}", "reference": "{{item.answer}}"}
"""The demo task's grader as a reward spec: 1 when the response is the answer, else 0."""
GRPO_HYPERPARAMETERS = {"prompts_per_step": 16, "group_size": 8, "max_new_tokens": 6,
                        "learning_rate": 3e-5, "checkpoint_every": 250}
"""bench/rl_quality.py's settings: GRPO_STEPS of them fix most of the demonstrations' forgotten
carries (bench/RESULTS.md §9)."""
GRPO_STEPS = 1000


def _reinforce(client: AlignClient, world: Any, sft: dict[str, Any], steps: int,
               console: Console) -> dict[str, Any]:
    """GRPO on the demo's prompts from the fine-tuned model, rewarded by the exact answer."""
    prompts = client.upload_file(world.prompts, "prompts")
    job = client.create_job(model=sft["fine_tuned_model"], training_file=prompts["id"],
                            suffix="grpo", seed=0, method={
                                "type": "reinforcement", "reinforcement": {
                                    "algorithm": "grpo", "reward": EXACT_ANSWER,
                                    "hyperparameters": {**GRPO_HYPERPARAMETERS,
                                                        "max_steps": steps}}})
    console.print(f"created GRPO job [bold]{job['id']}[/] on {prompts['id']} "
                  f"({prompts['line_count']} prompts), rewarded by the exact answer")
    return _follow(client, job["id"], steps, console, label="GRPO", metric="reward_mean")


REWARD_EPOCHS, REWARD_BATCH = 3, 32


def _reward_model(client: AlignClient, world: Any, console: Console) -> dict[str, Any]:
    """A reward model with the implicit head on the demo's preference pairs."""
    training = client.upload_file(world.preference, "preference")
    hyperparameters = {"head": "implicit", "n_epochs": REWARD_EPOCHS,
                       "batch_size": REWARD_BATCH, "learning_rate": 3e-4, "max_seq_length": 64,
                       "eval_every": 1000, "checkpoint_every": 100}
    job = client.create_job(model=DEMO_MODEL, training_file=training["id"], suffix="rm", seed=0,
                            method={"type": "reward_model",
                                    "reward_model": {"hyperparameters": hyperparameters}})
    console.print(f"created reward-model job [bold]{job['id']}[/] on {training['id']} "
                  f"({training['line_count']} preference pairs)")
    steps = -(-training["line_count"] * REWARD_EPOCHS // REWARD_BATCH)
    return _follow(client, job["id"], steps, console, label="reward model")


def _ranking_table(settings: AlignSettings, key: str, world: Any, job: dict[str, Any]) -> Table:
    """Held-out preference pairs (the evaluation problems, rejected answers drawn anew) scored
    through the reward service: how often the gold answer outscores the rejected one."""
    import random

    from trainer.demo_world.datasets import preference_rows, split_problems

    seed = json.loads((world.root / "manifest.json").read_text())["config"]["seed"]
    pairs = preference_rows(split_problems(seed)["eval_prompts"], random.Random("demo-held-out"))
    items = [{"prompt": row["prompt"], "response": row[side]}
             for row in pairs for side in ("chosen", "rejected")]
    with httpx.Client(base_url=settings.reward_url, timeout=300,
                      headers={"Authorization": f"Bearer {key}"}) as http:
        response = http.post("/v1/score", json={"items": items, "reward": {
            "type": "reward_model", "model": job["fine_tuned_model"]}})
        response.raise_for_status()
    scores = [row["score"] for row in response.json()["data"]]
    right = sum(chosen > rejected for chosen, rejected in zip(scores[::2], scores[1::2]))
    table = Table("reward model", "held-out pairs ranked right",
                  title=f"{len(pairs)} held-out preference pairs (reward service)")
    table.add_row(job["fine_tuned_model"], f"{right / len(pairs):.1%}")
    return table


def _accuracy_table(settings: AlignSettings, world: Any, before: tuple[str, Path],
                    job: dict[str, Any]) -> Table:
    """Held-out exact match of the model ``before`` (its id and folder) and of ``job``'s."""
    from trainer.demo_world.evaluate import exact_match_accuracy

    rows = [json.loads(line) for line in world.eval_prompts.read_text().splitlines() if line]
    table = Table("model", "held-out exact match", title=f"{len(rows)} held-out problems")
    table.columns[0].min_width = len(job["fine_tuned_model"])
    for name, folder in (before, (job["fine_tuned_model"], _model_dir(settings, job))):
        table.add_row(name, f"{exact_match_accuracy(folder, rows):.1%}")
    return table


def _model_dir(settings: AlignSettings, job: dict[str, Any]) -> Path:
    return settings.artifacts_dir / "models" / job["id"]


def _check(job: dict[str, Any], console: Console) -> None:
    if job["status"] != "succeeded":
        console.print(f"[red]job {job['id']} {job['status']}[/]: {job.get('error')}")
        raise SystemExit(1)


def _ask(settings: AlignSettings, key: str, world: Any, job: dict[str, Any]) -> Table:
    """A few held-out problems answered by both models through the inference service."""
    rows = [json.loads(line) for line in world.eval_prompts.read_text().splitlines() if line]
    table = Table("prompt", "gold", DEMO_MODEL, job["fine_tuned_model"],
                  title="answers from the inference service (greedy)")
    with httpx.Client(base_url=settings.inference_url, timeout=120,
                      headers={"Authorization": f"Bearer {key}"}) as http:
        for row in rows[:5]:
            answers = []
            for model in (DEMO_MODEL, job["fine_tuned_model"]):
                response = http.post("/v1/completions", json={
                    "model": model, "prompt": row["prompt"], "max_tokens": 12,
                    "temperature": 0})
                response.raise_for_status()
                answers.append(response.json()["choices"][0]["text"])
            table.add_row(row["prompt"], row["answer"], *answers)
    return table


def _print_next_steps(console: Console, stack: Stack, key: str) -> None:
    urls = stack.urls()
    for name, url in urls.items():
        console.print(f"{name:10} {url}   (docs: {url}/docs)")
    console.print(f"\nyour demo API key: [bold]{key}[/]")
    console.print(f"try:  curl -H 'Authorization: Bearer {key}' {urls['api']}/v1/fine_tuning/jobs",
                  soft_wrap=True)
    console.print(f"      curl -H 'Authorization: Bearer {key}' {urls['inference']}/v1/completions "
                  f"-H 'content-type: application/json' -d '{{\"model\": \"{DEMO_MODEL}\", "
                  f"\"prompt\": \"12+7=\", \"max_tokens\": 8}}'", soft_wrap=True)


def _claim(stack: Stack, console: Console) -> None:
    """The data folder for this demo's stack; a stack already there: refuse, touching nothing
    (its base models lack the demo world's, and it is not this command's to stop)."""
    stop_on_signals()
    try:
        stack.claim()
    except StackError as exc:
        fail(str(exc))


def _jobs(settings: AlignSettings, console: Console, world: Any, steps: int,
          grpo_steps: int) -> str:
    """Fine-tune, GRPO and a reward model over HTTP, with their reports; the demo's key."""
    key = _project_key(settings)
    with AlignClient(settings.api_url, key) as client:
        job = _fine_tune(client, world, steps, console)
    _check(job, console)
    console.print(_accuracy_table(settings, world, (DEMO_MODEL, world.base_model), job))
    console.print(_ask(settings, key, world, job))
    if grpo_steps:
        with AlignClient(settings.api_url, key) as client:
            grpo_job = _reinforce(client, world, job, grpo_steps, console)
        _check(grpo_job, console)
        console.print(_accuracy_table(settings, world, (job["fine_tuned_model"],
                                                        _model_dir(settings, job)), grpo_job))
    with AlignClient(settings.api_url, key) as client:
        reward_job = _reward_model(client, world, console)
    _check(reward_job, console)
    console.print(_ranking_table(settings, key, world, reward_job))
    return key


def run_demo(settings: AlignSettings, console: Console, *, keep_running: bool,
             demo_dir: Path | None, steps: int, pretrain_steps: int | None = None,
             grpo_steps: int = GRPO_STEPS) -> None:
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # rich draws this command's progress
    stack = embedded_stack(settings, console=console)
    _claim(stack, console)
    try:
        world = _build_world(console, demo_dir, pretrain_steps)
        stack.env["ALIGND_BASE_MODELS"] = json.dumps({DEMO_MODEL: str(world.base_model)})
        with console.status("starting the embedded stack (PostgreSQL, api, worker, reward, "
                            "inference)"):
            stack.start()
        _print_next_steps(console, stack, _jobs(settings, console, world, steps, grpo_steps))
    except BaseException:
        stack.stop()
        raise
    if keep_running:
        console.print("\nthe platform keeps running; Ctrl-C or `alignd stop` stops it")
        stack.supervise()
    else:
        stack.stop()
