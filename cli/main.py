"""`alignd`: operator verbs (up, demo, worker, migrate, serve) and user verbs (files, jobs)."""

from __future__ import annotations

import os
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from cli import user
from services.settings import AlignSettings, ApiSettings, InferenceSettings, RewardSettings

app = typer.Typer(help="alignd: align language models and serve them.", no_args_is_help=True)
app.add_typer(user.files, name="files")
app.add_typer(user.jobs, name="jobs")
app.add_typer(user.admin, name="admin")
app.command("models")(user.list_models)
console = Console()


def private_files() -> None:
    """Files and folders this process (and what it starts) creates are its owner's alone
    (0600/0700): models, checkpoints, optimizer and RNG state, rollouts, uploads and logs hold
    other people's data, and a python grader or another local user must not read them."""
    os.umask(0o077)


class Service(StrEnum):
    api = "api"
    reward = "reward"
    inference = "inference"


@app.command()
def migrate() -> None:
    """Upgrade the database schema to this version of alignd."""
    private_files()
    from services.db.migrate import head_revision, upgrade
    from services.embedded import resolve_database_url

    upgrade(resolve_database_url(AlignSettings()))
    console.print(f"database schema at revision [bold]{head_revision()}[/]")


@app.command()
def serve(service: Service) -> None:
    """Run one HTTP service in the foreground (ALIGND_HOST / ALIGND_PORT)."""
    private_files()
    if service is Service.api:
        from api.main import serve as serve_api

        serve_api(ApiSettings())
    elif service is Service.reward:
        from reward_service.main import serve as serve_reward

        serve_reward(RewardSettings())
    else:
        from inference.main import serve as serve_inference

        serve_inference(InferenceSettings())


@app.command()
def worker() -> None:
    """Run a Celery worker that trains jobs (queues from ALIGND_QUEUES)."""
    private_files()
    from trainer.worker import run_worker

    run_worker()


@app.command()
def up() -> None:
    """Start the embedded stack (api, worker, reward, inference) and wait for Ctrl-C."""
    private_files()
    from cli.stack import embedded_stack

    stack = embedded_stack(AlignSettings())
    with console.status("starting the embedded stack"):
        stack.start()
    for name, url in stack.urls().items():
        console.print(f"{name:10} {url}")
    console.print(f"logs in {stack.log_dir}; Ctrl-C stops everything")
    stack.wait()


@app.command()
def demo(
    keep_running: Annotated[bool, typer.Option(help="leave the platform running afterwards")] = True,
    demo_dir: Annotated[Path | None, typer.Option(help="where the demo world is built")] = None,
    steps: Annotated[int, typer.Option(help="supervised fine-tuning steps")] = 300,
    pretrain_steps: Annotated[int | None, typer.Option(
        help="pretraining steps of the demo model (default: the demo world's own)")] = None,
    grpo_steps: Annotated[int, typer.Option(
        help="GRPO steps after fine-tuning (0 skips the GRPO step)")] = 40,
) -> None:
    """Build the demo world, start the stack, fine-tune over HTTP, then GRPO; report accuracy."""
    private_files()
    from cli.demo import run_demo

    run_demo(AlignSettings(), console, keep_running=keep_running, demo_dir=demo_dir, steps=steps,
             pretrain_steps=pretrain_steps, grpo_steps=grpo_steps)


if __name__ == "__main__":
    app()
