"""User verbs over HTTP: files, jobs, models, admin (ALIGND_API_URL, ALIGND_API_KEY)."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from services.client import AlignClient, ApiError

files = typer.Typer(help="Upload and list datasets.", no_args_is_help=True)
jobs = typer.Typer(help="Create, follow and cancel fine-tuning jobs.", no_args_is_help=True)
admin = typer.Typer(help="Projects and API keys (needs the admin key).", no_args_is_help=True)
console = Console()

ApiUrl = Annotated[str, typer.Option(envvar="ALIGND_API_URL", help="api base URL")]
ApiKey = Annotated[str, typer.Option(envvar="ALIGND_API_KEY", help="project API key")]
AdminKey = Annotated[str, typer.Option(envvar="ALIGND_ADMIN_KEY", help="admin key")]
DEFAULT_URL = "http://127.0.0.1:8000"


def _client(url: str, key: str) -> AlignClient:
    return AlignClient(url, key)


def _event_line(event: dict[str, Any]) -> str:
    moment = datetime.fromtimestamp(event["created_at"]).strftime("%H:%M:%S")
    return f"[dim]{moment}[/] {event['level']:7} {event['message']}"


def _show(value: Any) -> None:
    console.print_json(json.dumps(value))


def _run(call: Any) -> Any:
    try:
        return call()
    except ApiError as exc:
        console.print(f"[red]error {exc.status_code}[/]: {exc.message}")
        raise typer.Exit(1) from None


@files.command("upload")
def upload(path: Path, purpose: str, url: ApiUrl = DEFAULT_URL, key: ApiKey = "") -> None:
    """Upload a JSONL file (purpose: supervised, preference, prompts, ratings, fine-tune)."""
    with _client(url, key) as client:
        _show(_run(lambda: client.upload_file(path, purpose)))


@files.command("list")
def list_files(url: ApiUrl = DEFAULT_URL, key: ApiKey = "") -> None:
    with _client(url, key) as client:
        table = Table("id", "purpose", "lines", "bytes", "filename")
        for f in _run(client.list_files):
            table.add_row(f["id"], f["purpose"], str(f["line_count"]), str(f["bytes"]), f["filename"])
        console.print(table)


@jobs.command("create")
def create(
    model: str, training_file: str, url: ApiUrl = DEFAULT_URL, key: ApiKey = "",
    method: str = "supervised", validation_file: str | None = None, suffix: str | None = None,
    seed: int | None = None,
    hyperparameters: Annotated[str, typer.Option(help='JSON, e.g. \'{"n_epochs": 2}\'')] = "{}",
) -> None:
    """Create a fine-tuning job."""
    body = {"type": method, method: {"hyperparameters": json.loads(hyperparameters)}}
    with _client(url, key) as client:
        _show(_run(lambda: client.create_job(
            model=model, training_file=training_file, validation_file=validation_file,
            suffix=suffix, seed=seed, method=body)))


@jobs.command("list")
def list_jobs(url: ApiUrl = DEFAULT_URL, key: ApiKey = "", limit: int = 20) -> None:
    with _client(url, key) as client:
        table = Table("id", "status", "model", "fine_tuned_model")
        for job in _run(lambda: client.list_jobs(limit)):
            table.add_row(job["id"], job["status"], job["model"], job["fine_tuned_model"] or "")
        console.print(table)


@jobs.command("show")
def show(job_id: str, url: ApiUrl = DEFAULT_URL, key: ApiKey = "") -> None:
    with _client(url, key) as client:
        _show(_run(lambda: client.get_job(job_id)))


@jobs.command("cancel")
def cancel(job_id: str, url: ApiUrl = DEFAULT_URL, key: ApiKey = "") -> None:
    with _client(url, key) as client:
        _show(_run(lambda: client.cancel_job(job_id)))


@jobs.command("events")
def events(job_id: str, url: ApiUrl = DEFAULT_URL, key: ApiKey = "",
           follow: Annotated[bool, typer.Option("--follow", "-f")] = False) -> None:
    """Print a job's events; --follow streams them until the job finishes."""
    with _client(url, key) as client:
        if not follow:
            for event in _run(lambda: client.events_since(job_id, None)):
                console.print(_event_line(event))
            return
        for event, _job in client.follow(job_id):
            if event is not None:
                console.print(_event_line(event))


@jobs.command("metrics")
def metrics(job_id: str, url: ApiUrl = DEFAULT_URL, key: ApiKey = "") -> None:
    """Show each metric's last value and its number of points."""
    with _client(url, key) as client:
        table = Table("metric", "points", "first", "last", "last step")
        for series in _run(lambda: client.metrics(job_id)):
            values = series["values"]
            table.add_row(series["name"], str(len(values)), f"{values[0]:.4g}",
                          f"{values[-1]:.4g}", str(series["steps"][-1]))
        console.print(table)


def list_models(url: ApiUrl = DEFAULT_URL, key: ApiKey = "") -> None:
    """List the models this project can use."""
    with _client(url, key) as client:
        table = Table("id", "kind", "base_model")
        for model in _run(client.list_models):
            table.add_row(model["id"], model["kind"], model["base_model"] or "")
        console.print(table)


@admin.command("create-project")
def create_project(name: str, url: ApiUrl = DEFAULT_URL, admin_key: AdminKey = "") -> None:
    """Create a project and its first API key (printed once)."""
    with _client(url, admin_key) as client:
        project = _run(lambda: client.create_project(name))
        _show({"project": project, "api_key": _run(lambda: client.create_api_key(project["id"]))})
