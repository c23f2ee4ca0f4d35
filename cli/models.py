"""`alignd models`: list the models a project can use, and download one into a folder that
`from_pretrained` and vLLM load as it is (a LoRA adapter as peft's folder, or merged into its
base model by a worker with --merged)."""

from __future__ import annotations

import io
import tarfile
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.status import Status
from rich.text import Text

from cli.user import (
    DEFAULT_URL,
    ApiCommands,
    ApiKey,
    ApiUrl,
    AsJson,
    Quiet,
    _client,
    console,
    fail,
    list_models,
)
from services.client import AlignClient, ModelContent
from services.model_archive import UnsafeArchive, unpack_into

models = ApiCommands(help="List the models this project can use (the default), or download one.",
                     invoke_without_command=True)


@models.callback()
def default(ctx: typer.Context, url: ApiUrl = DEFAULT_URL, key: ApiKey = "",
            as_json: AsJson = False, quiet: Quiet = False) -> None:
    """List the models this project can use (`alignd models`), or download one."""
    if ctx.invoked_subcommand is None:
        list_models(url, key, as_json, quiet)


models.command("list")(list_models)


@models.command("download")
def download(
    model_id: Annotated[str, typer.Argument(metavar="ID", help="the model's id")],
    folder: Annotated[Path, typer.Argument(metavar="DIR", help="where to unpack it (created)")],
    merged: Annotated[bool, typer.Option(
        "--merged", help="a LoRA adapter merged into its base model's weights (a worker makes "
                         "it on the first request; this waits for it)")] = False,
    force: Annotated[bool, typer.Option(
        "--force", help="write into a non-empty DIR, replacing the files the model "
                        "holds")] = False,
    url: ApiUrl = DEFAULT_URL, key: ApiKey = "",
) -> None:
    """Download a model's folder into DIR.

    What `from_pretrained` and vLLM load as it is: weights, config, generation config and
    tokenizer; for a LoRA adapter, peft's adapter folder, or with --merged the full model."""
    if folder.is_dir() and any(folder.iterdir()) and not force:
        fail(f"error: {folder} is not empty; give an empty or new folder, or --force to "
             "overwrite the files the model holds")
    with _client(url, key) as client:
        names = _fetch(client, model_id, merged, folder, force)
    console.print(Text(f"wrote {len(names)} files of {model_id} to {folder}"), highlight=False,
                  soft_wrap=True)


def _fetch(client: AlignClient, model_id: str, merged: bool, folder: Path,
           force: bool) -> list[str]:
    """Ask until the archive comes (a spinner while a worker merges), then unpack it."""
    waiting: Status | None = None
    try:
        while True:
            with client.model_content(model_id, merged) as content:
                if content.export is None:
                    if waiting is not None:
                        waiting.stop()
                        waiting = None
                    return _unpack(content, folder, force)
            message = (f"merging {model_id} into its base model on a worker: "
                       f"{content.export.get('status', 'queued')}")
            if waiting is None:
                waiting = console.status(message)
                waiting.start()
            waiting.update(message)
            time.sleep(min(max(content.retry_after, 0.5), 30.0))
    finally:
        if waiting is not None:
            waiting.stop()


def _unpack(content: ModelContent, folder: Path, force: bool) -> list[str]:
    assert content.stream is not None
    columns = (TextColumn("[progress.description]{task.description}"), BarColumn(),
               DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task("downloading", total=content.size)
        stream = io.BufferedReader(_Counting(content.stream,
                                             lambda size: progress.advance(task, size)))
        try:
            return unpack_into(stream, folder, replace=force)
        except (UnsafeArchive, FileExistsError) as exc:
            fail(f"error: {exc}; nothing was written to {folder}")
        except tarfile.ReadError as exc:
            fail(f"error: the archive could not be read ({exc}): the download was cut short "
                 f"or is not a tar archive; nothing was written to {folder}")


class _Counting(io.RawIOBase):
    """A readable stream that reports how many bytes were read from it."""

    def __init__(self, inner: Any, on_read: Any) -> None:
        self.inner, self.on_read = inner, on_read

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        size = self.inner.readinto(buffer)
        self.on_read(size)
        return size
