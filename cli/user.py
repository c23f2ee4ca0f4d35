"""User verbs over HTTP: files, jobs, models, admin (ALIGND_API_URL, ALIGND_API_KEY).

Every command prints an error the api answered with, or the api's absence, as one line on
stderr and exits 1; list and show commands print a table by default, the API's own objects as
one JSON document with --json, and only their ids, one a line, with -q/--quiet."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.text import Text

from cli.follow import JOB_EXIT_STATUS, event_line, follow_job, metric_charts
from cli.tables import Column, print_rows
from services.client import AlignClient, ApiError, ApiUnavailable

Command = TypeVar("Command", bound=Callable[..., Any])
console = Console()
errors = Console(stderr=True)


def reports_errors(command: Command) -> Command:
    """Run ``command``, turning an error the api answered with, a refused connection or a
    timeout into one line on stderr and exit status 1: they are not alignd's bugs, so no
    traceback (streaming commands included)."""

    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except ApiError as exc:
            fail(f"error {exc.status_code}: {exc.message}")
        except ApiUnavailable as exc:
            fail(f"error: {exc.message}"
                 + (": is it running? Start it with `alignd up`" if exc.refused else ""))

    return run  # type: ignore[return-value]


def fail(message: str) -> NoReturn:
    errors.print(Text(message, style="red"), soft_wrap=True, highlight=False)
    raise typer.Exit(1)


class ApiCommands(typer.Typer):
    """A command group each of whose commands `reports_errors`."""

    def command(self, *args: Any, **kwargs: Any) -> Callable[[Command], Command]:
        register = super().command(*args, **kwargs)

        def decorator(command: Command) -> Command:
            register(reports_errors(command))
            return command

        return decorator


files = ApiCommands(help="Upload and list datasets.", no_args_is_help=True)
jobs = ApiCommands(help="Create, follow and cancel fine-tuning jobs.", no_args_is_help=True)
admin = ApiCommands(help="Projects and API keys (needs the admin key).", no_args_is_help=True)

ApiUrl = Annotated[str, typer.Option(envvar="ALIGND_API_URL", help="api base URL")]
ApiKey = Annotated[str, typer.Option(envvar="ALIGND_API_KEY", help="project API key")]
AdminKey = Annotated[str, typer.Option(envvar="ALIGND_ADMIN_KEY", help="admin key")]
AsJson = Annotated[bool, typer.Option("--json", help="the API's objects as one JSON document")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="only ids, one a line")]
DEFAULT_URL = "http://127.0.0.1:8000"

FILE_COLUMNS = (Column("id", lambda f: f["id"], whole=True),
                Column("purpose", lambda f: f["purpose"]),
                Column("lines", lambda f: str(f["line_count"]), justify="right"),
                Column("bytes", lambda f: str(f["bytes"]), justify="right"),
                Column("filename", lambda f: f["filename"]))
JOB_COLUMNS = (Column("id", lambda j: j["id"], whole=True),
               Column("status", lambda j: j["status"]),
               Column("model", lambda j: j["model"], whole=True),
               Column("fine_tuned_model", lambda j: j["fine_tuned_model"] or "", whole=True))
MODEL_COLUMNS = (Column("id", lambda m: m["id"], whole=True),
                 Column("kind", lambda m: m["kind"]),
                 # the root base model is in a fine-tuned id; the parent is what it was trained from
                 Column("parent", lambda m: m.get("parent") or "", whole=True))
METRIC_COLUMNS = (Column("metric", lambda s: s["name"], whole=True),
                  Column("points", lambda s: str(len(s["values"])), justify="right"),
                  Column("first", lambda s: f"{s['values'][0]:.4g}", justify="right"),
                  Column("last", lambda s: f"{s['values'][-1]:.4g}", justify="right"),
                  Column("last step", lambda s: str(s["steps"][-1]), justify="right"))
EVENT_COLUMNS = (Column("id", lambda e: e["id"], whole=True),)


def _client(url: str, key: str) -> AlignClient:
    return AlignClient(url, key)


def _check_output(as_json: bool, quiet: bool, *others: tuple[str, bool]) -> None:
    chosen = [name for name, on in [("--json", as_json), ("--quiet", quiet), *others] if on]
    if len(chosen) > 1:
        raise typer.BadParameter(f"{' and '.join(chosen)} each choose what is printed: give one")


def _emit(objects: list[dict[str, Any]], columns: tuple[Column, ...], as_json: bool,
          quiet: bool) -> None:
    """Objects as a table, as JSON, or as their ids (the first column), one a line."""
    _check_output(as_json, quiet)
    if as_json:
        typer.echo(json.dumps(objects, indent=2))
    elif quiet:
        for obj in objects:
            typer.echo(columns[0].cell(obj))
    else:
        print_rows(console, objects, columns)


def _emit_one(obj: dict[str, Any], as_json: bool = False, quiet: bool = False) -> None:
    _check_output(as_json, quiet)
    if as_json:
        typer.echo(json.dumps(obj, indent=2))
    elif quiet:
        typer.echo(obj["id"])
    else:
        console.print_json(json.dumps(obj))


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise typer.BadParameter(f"not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise typer.BadParameter(f"must be a JSON object, got {text}")
    return value


@files.command("upload")
def upload(path: Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True)],
           purpose: str, url: ApiUrl = DEFAULT_URL, key: ApiKey = "", quiet: Quiet = False) -> None:
    """Upload a JSONL file (purpose: supervised, preference, prompts, ratings, fine-tune)."""
    with _client(url, key) as client:
        _emit_one(client.upload_file(path, purpose), quiet=quiet)


@files.command("list")
def list_files(url: ApiUrl = DEFAULT_URL, key: ApiKey = "", as_json: AsJson = False,
               quiet: Quiet = False) -> None:
    """List this project's files."""
    with _client(url, key) as client:
        _emit(client.list_files(), FILE_COLUMNS, as_json, quiet)


@jobs.command("create")
def create(
    model: str, training_file: str, url: ApiUrl = DEFAULT_URL, key: ApiKey = "",
    method: str = "supervised", validation_file: str | None = None, suffix: str | None = None,
    seed: int | None = None,
    hyperparameters: Annotated[dict[str, Any] | None, typer.Option(
        parser=_json_object, metavar="JSON", help='JSON, e.g. \'{"n_epochs": 2}\'')] = None,
    quiet: Quiet = False,
) -> None:
    """Create a fine-tuning job."""
    body = {"type": method, method: {"hyperparameters": hyperparameters or {}}}
    with _client(url, key) as client:
        _emit_one(client.create_job(model=model, training_file=training_file,
                                    validation_file=validation_file, suffix=suffix, seed=seed,
                                    method=body), quiet=quiet)


@jobs.command("list")
def list_jobs(url: ApiUrl = DEFAULT_URL, key: ApiKey = "", limit: int = 20,
              as_json: AsJson = False, quiet: Quiet = False) -> None:
    """List this project's jobs, newest first."""
    with _client(url, key) as client:
        _emit(client.list_jobs(limit), JOB_COLUMNS, as_json, quiet)


@jobs.command("show")
def show(job_id: str, url: ApiUrl = DEFAULT_URL, key: ApiKey = "", as_json: AsJson = False,
         quiet: Quiet = False) -> None:
    """Show a job."""
    with _client(url, key) as client:
        _emit_one(client.get_job(job_id), as_json, quiet)


@jobs.command("cancel")
def cancel(job_id: str, url: ApiUrl = DEFAULT_URL, key: ApiKey = "") -> None:
    """Cancel a job (a running one stops within a step)."""
    with _client(url, key) as client:
        _emit_one(client.cancel_job(job_id))


@jobs.command("follow")
def follow(job_id: str, url: ApiUrl = DEFAULT_URL, key: ApiKey = "") -> None:
    """Follow a job until it ends; exit status 0 when it succeeded.

    Prints its events as they come above a progress bar over its steps (with an ETA) and the
    latest value of each metric. Exit status: 0 succeeded, 3 failed, 4 cancelled (1: an error
    of the api or of reaching it, as for every command)."""
    with _client(url, key) as client:
        job = follow_job(client, job_id, console)
    raise typer.Exit(JOB_EXIT_STATUS[job["status"]])


@jobs.command("events")
def events(job_id: str, url: ApiUrl = DEFAULT_URL, key: ApiKey = "",
           follow: Annotated[bool, typer.Option(
               "--follow", "-f", help="follow the job until it ends, as `jobs follow` does")] = False,
           as_json: AsJson = False, quiet: Quiet = False) -> None:
    """Print a job's events, oldest first (--follow: as `jobs follow` does)."""
    _check_output(as_json, quiet, ("--follow", follow))
    with _client(url, key) as client:
        if follow:
            job = follow_job(client, job_id, console)
            raise typer.Exit(JOB_EXIT_STATUS[job["status"]])
        found = client.events_since(job_id, None)
    if as_json or quiet:
        _emit(found, EVENT_COLUMNS, as_json, quiet)
        return
    for event in found:
        console.print(event_line(event), highlight=False, soft_wrap=True)


@jobs.command("metrics")
def metrics(job_id: str, url: ApiUrl = DEFAULT_URL, key: ApiKey = "",
            name: Annotated[list[str] | None, typer.Option(
                "--name", "-n", help="only this metric (repeat for more)")] = None,
            plot: Annotated[bool, typer.Option(help="draw each metric's curve")] = False,
            tensorboard: Annotated[Path | None, typer.Option(
                help="write the metrics as a TensorBoard events file under DIR/JOB_ID, "
                     "for `tensorboard --logdir DIR`", metavar="DIR")] = None,
            as_json: AsJson = False, quiet: Quiet = False) -> None:
    """Show each metric's first and last value and its number of points, or draw its curve,
    or export them for TensorBoard."""
    _check_output(as_json, quiet, ("--plot", plot), ("--tensorboard", tensorboard is not None))
    if tensorboard is not None:
        with _client(url, key) as client:
            file_name, content = client.tensorboard_events(job_id)
        run = tensorboard / job_id
        run.mkdir(parents=True, exist_ok=True)
        (run / file_name).write_bytes(content)
        console.print(Text(f"wrote {run / file_name}; view with: tensorboard --logdir "
                           f"{tensorboard}"))
        return
    with _client(url, key) as client:
        series = client.metrics(job_id, name)
    if not plot:
        _emit(series, METRIC_COLUMNS, as_json, quiet)
        return
    if not series:
        errors.print(Text(f"{job_id} has no metrics yet"))
    for chart in metric_charts(series, console.width):
        console.print(Text.from_ansi(chart), soft_wrap=True)


@reports_errors  # `alignd models`: registered by cli.main on the top-level app
def list_models(url: ApiUrl = DEFAULT_URL, key: ApiKey = "", as_json: AsJson = False,
                quiet: Quiet = False) -> None:
    """List the models this project can use."""
    with _client(url, key) as client:
        _emit(client.list_models(), MODEL_COLUMNS, as_json, quiet)


@admin.command("create-project")
def create_project(name: str, url: ApiUrl = DEFAULT_URL, admin_key: AdminKey = "") -> None:
    """Create a project and its first API key (printed once)."""
    with _client(url, admin_key) as client:
        project = client.create_project(name)
        _emit_one({"project": project, "api_key": client.create_api_key(project["id"])})
