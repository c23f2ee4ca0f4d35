"""`alignd admin models`: the base models every project can train and generate from, declared
and removed with the admin key, effective at once (no restart)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cli.tables import Column
from cli.user import (
    DEFAULT_URL,
    AdminKey,
    ApiCommands,
    ApiUrl,
    AsJson,
    Quiet,
    _client,
    _emit,
    _emit_one,
)
from services.hub import is_hub_id

models = ApiCommands(help="Base models every project can use (needs the admin key).",
                     no_args_is_help=True)


def _yes_no(value: object) -> str:
    return "" if value is None else "yes" if value else "no"


BASE_MODEL_COLUMNS = (
    Column("id", lambda m: m["id"], whole=True),
    Column("from", lambda m: m.get("hub_id") or m["path"]),
    Column("architecture", lambda m: ", ".join((m.get("checkpoint") or {}).get(
        "architectures") or [])),
    Column("context", lambda m: str((m.get("checkpoint") or {}).get("context_length") or ""),
           justify="right"),
    Column("chat template", lambda m: _yes_no((m.get("checkpoint") or {}).get(
        "chat_template"))))


@models.command("add")
def add(
    model_id: Annotated[str, typer.Argument(metavar="ID", help="the id jobs and requests name")],
    source: Annotated[str, typer.Argument(
        metavar="PATH_OR_HUB_ID", help="the checkpoint's folder (as the api's machine sees "
        "it), or a Hugging Face hub id such as Qwen/Qwen2.5-0.5B")],
    trust_remote_code: Annotated[bool, typer.Option(
        "--trust-remote-code", help="accept a checkpoint that ships its own code, where the "
        "server allows it (ALIGND_ALLOW_REMOTE_CODE)")] = False,
    url: ApiUrl = DEFAULT_URL, admin_key: AdminKey = "", quiet: Quiet = False,
) -> None:
    """Declare a base model: its checkpoint is checked, and one alignd could not load is
    refused with the reason. A folder that exists here is sent as an absolute path."""
    if is_hub_id(source):
        where = {"hub_id": source}
    else:
        where = {"path": str(Path(source).expanduser().absolute())}
    with _client(url, admin_key) as client:
        _emit_one(client.declare_base_model(model_id, trust_remote_code=trust_remote_code,
                                            **where), quiet=quiet)


@models.command("list")
def list_base_models(url: ApiUrl = DEFAULT_URL, admin_key: AdminKey = "",
                     as_json: AsJson = False, quiet: Quiet = False) -> None:
    """List the declared base models and what their checkpoints hold."""
    with _client(url, admin_key) as client:
        _emit(client.list_base_models(), BASE_MODEL_COLUMNS, as_json, quiet)


@models.command("remove")
def remove(model_id: Annotated[str, typer.Argument(metavar="ID")], url: ApiUrl = DEFAULT_URL,
           admin_key: AdminKey = "") -> None:
    """Take a base model out of the registry (refused while a model or a job needs it)."""
    with _client(url, admin_key) as client:
        _emit_one(client.remove_base_model(model_id))
