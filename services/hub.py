"""Base models named by Hugging Face hub id: fetched once through `huggingface_hub` (pure
Python; the api stays without torch), which keeps its own cache and reads its own variables
(`HF_HOME`, `HF_HUB_CACHE`, `HF_HUB_OFFLINE`, `HF_TOKEN`), then copied into a folder the
caller keeps (the artifact store, which every service reads).

Offline, a model in the hub cache still resolves (its `refs/main` snapshot); one that is not
there, or a hub that cannot be reached, is a 400 naming the id and why."""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from services.errors import InvalidRequest

HUB_ID = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9_]|[.-][A-Za-z0-9_])*"
                    r"/[A-Za-z0-9](?:[A-Za-z0-9_]|[.-][A-Za-z0-9_])*$")
"""`org/name`, as the hub spells repository ids: no `--` or `..`, no `.` or `-` at an end."""
HUB_ID_LENGTH = 96
"""The hub's bound on a repository id's parts (both together, here)."""
MODEL_FILES = ["*.json", "*.safetensors", "*.jinja", "*.model", "*.txt", "*.tiktoken", "*.py"]
"""What a checkpoint needs: config, tokenizer, chat template, weights, and any custom code (so
that an operator who allows it can load it)."""
BIN_FILES = ["pytorch_model*.bin", "*.json"]
"""Weights of a repository that has no safetensors: fetched only then, never both."""
TOP_LEVEL_ONLY = ["*/*"]
"""A checkpoint is flat: subfolders hold other formats (onnx/, original/, gguf/)."""


class HubFetchFailed(InvalidRequest):
    def __init__(self, hub_id: str, why: str):
        super().__init__(f"model {hub_id!r} could not be fetched from the Hugging Face hub: "
                         f"{why}", param="hub_id", code="hub_fetch_failed")


def is_hub_id(value: str) -> bool:
    """Whether ``value`` names a hub repository rather than a folder: `org/name`, and no folder
    of that name exists here."""
    return bool(HUB_ID.match(value)) and not Path(value).exists()


def folder_name(hub_id: str) -> str:
    """The hub cache's own spelling of a repository as one path component."""
    return "models--" + hub_id.replace("/", "--")


def fetch_snapshot(hub_id: str) -> Path:
    """The repository's snapshot folder in the hub cache, downloaded if needed (safetensors
    weights, or pytorch_model.bin where it has none)."""
    from huggingface_hub import snapshot_download

    with _reasons(hub_id):
        snapshot = Path(snapshot_download(hub_id, allow_patterns=MODEL_FILES,
                                          ignore_patterns=TOP_LEVEL_ONLY))
        if not any(snapshot.glob("*.safetensors")):
            snapshot = Path(snapshot_download(hub_id, allow_patterns=BIN_FILES,
                                              ignore_patterns=TOP_LEVEL_ONLY))
    return snapshot


@contextmanager
def _reasons(hub_id: str) -> Iterator[None]:
    """The hub's errors as one `HubFetchFailed` saying which case it is."""
    try:
        yield
    except InvalidRequest:
        raise
    except Exception as exc:
        why = _why(exc)
        if why is None:
            raise
        raise HubFetchFailed(hub_id, why) from exc


def _why(exc: Exception) -> str | None:
    from huggingface_hub import constants, errors

    detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    cache = constants.HF_HUB_CACHE
    if isinstance(exc, errors.RevisionNotFoundError):
        return f"its revision main does not exist ({detail})"
    if isinstance(exc, (errors.RepositoryNotFoundError, errors.GatedRepoError)):
        return ("the hub has no such repository, or it is gated or private and the api's "
                f"HF_TOKEN may not read it ({detail})")
    if constants.is_offline_mode():
        return (f"HF_HUB_OFFLINE is set and the hub cache ({cache}) holds no snapshot of it; "
                "unset HF_HUB_OFFLINE, or put the model in that cache")
    if isinstance(exc, (errors.LocalEntryNotFoundError, errors.HfHubHTTPError, OSError)):
        return (f"the hub is unreachable ({detail}) and the hub cache ({cache}) holds no "
                "snapshot of it")
    return None


def copy_snapshot(snapshot: Path, target: Path) -> None:
    """The snapshot's files (links into the cache's blobs) as plain files of ``target``: hard
    links where the cache is on the same filesystem, copies otherwise."""
    target.mkdir(parents=True, exist_ok=True)
    for entry in sorted(snapshot.iterdir()):
        if not entry.is_file():
            continue
        source = entry.resolve()
        try:
            os.link(source, target / entry.name)
        except OSError:
            shutil.copyfile(source, target / entry.name)
