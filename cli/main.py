"""`alignd`: operator verbs (up, stop, status, demo, worker, migrate, serve) and user verbs
(files, jobs, models)."""

from __future__ import annotations

import os
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from cli import admin_models, models, user
from services.settings import AlignSettings, ApiSettings, InferenceSettings, RewardSettings

app = typer.Typer(help="alignd: align language models and serve them.", no_args_is_help=True)
app.add_typer(user.files, name="files")
app.add_typer(user.jobs, name="jobs")
app.add_typer(user.admin, name="admin")
user.admin.add_typer(admin_models.models, name="models")
app.add_typer(models.models, name="models")
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
    from services import embedded
    from services.db.migrate import head_revision, upgrade

    settings = AlignSettings()
    started = settings.embedded and embedded.embedded_postgres_pid(settings.postgres_dir) is None
    upgrade(embedded.resolve_database_url(settings))
    console.print(f"database schema at revision [bold]{head_revision()}[/]")
    if started:  # this command started the embedded PostgreSQL: it stops it
        embedded.stop_embedded_postgres(settings.postgres_dir)


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
    """Start the embedded stack (api, worker, reward, inference), restart a part that dies,
    and stop everything on Ctrl-C or `alignd stop`. One stack per data folder."""
    private_files()
    from cli.stack import embedded_stack, stop_on_signals
    from cli.stack_lock import StackError

    stack = embedded_stack(AlignSettings(), console=console)
    stop_on_signals()
    try:
        stack.claim()
        with console.status("starting the embedded stack"):
            stack.start()
    except StackError as exc:
        user.fail(str(exc))
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    for name, url in stack.urls().items():
        console.print(f"{name:10} {url}")
    console.print(f"logs in {stack.log_dir}; Ctrl-C or `alignd stop` stops everything")
    stack.supervise()


@app.command()
def stop() -> None:
    """Stop the stack running on this data folder (ALIGND_DATA_DIR) and wait until it has."""
    from cli.stack_lock import stop_stack

    data_dir = AlignSettings().data_dir.expanduser()
    try:
        record = stop_stack(data_dir)
    except TimeoutError as exc:
        user.fail(str(exc))
    if record is None:
        console.print(f"alignd is not running on {data_dir}")
    else:
        console.print(f"stopped alignd (pid {record.get('pid')}) on {data_dir}")


@app.command()
def status() -> None:
    """Show each part of the stack running on this data folder: pid, port, health, uptime,
    restarts. Exits 1 when no stack runs there."""
    from cli.stack import status_table
    from cli.stack_lock import running_stack

    data_dir = AlignSettings().data_dir.expanduser()
    record = running_stack(data_dir)
    if record is None:
        console.print(f"alignd is not running on {data_dir}")
        raise typer.Exit(1)
    console.print(status_table(record))


@app.command()
def demo(
    keep_running: Annotated[bool, typer.Option(help="leave the platform running afterwards")] = True,
    demo_dir: Annotated[Path | None, typer.Option(help="where the demo world is built")] = None,
    steps: Annotated[int, typer.Option(help="supervised fine-tuning steps")] = 300,
    pretrain_steps: Annotated[int | None, typer.Option(
        help="pretraining steps of the demo model (default: the demo world's own)")] = None,
    grpo_steps: Annotated[int, typer.Option(
        help="GRPO steps after fine-tuning (0 skips the GRPO step)")] = 1000,  # GRPO_STEPS
) -> None:
    """Build the demo world, start the stack, fine-tune over HTTP, then GRPO; report accuracy.
    Refuses, before building anything, when a stack already runs on the data folder."""
    private_files()
    from cli.demo import run_demo

    run_demo(AlignSettings(), console, keep_running=keep_running, demo_dir=demo_dir, steps=steps,
             pretrain_steps=pretrain_steps, grpo_steps=grpo_steps)


if __name__ == "__main__":
    app()
