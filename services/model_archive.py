"""A model folder as a tar archive, both ends: the api streams one (`folder_members`,
`tar_stream`), the CLI unpacks one (`safe_extract`).

The archive holds the folder's files at its root (``config.json``, ``model.safetensors``, ...),
regular files only, so ``tar -x -C DIR`` gives a folder that ``from_pretrained`` (or vLLM, or
peft for an adapter) loads as it is. What is alignd's own and not the model's stays out:
training state (optimizer, scheduler, RNG, data position), folders being written, hidden files.
Unpacking trusts nothing in the archive: a member that is not a plain file or folder, or whose
path is absolute or climbs out with ``..``, stops it before anything is written there.
"""

from __future__ import annotations

import json
import os
import shutil
import tarfile
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

CHUNK = 1024 * 1024
BLOCK = tarfile.BLOCKSIZE
TRAINING_STATE = frozenset({"optimizer.pt", "scheduler.pt", "rng_state.pt", "trainer_state.json",
                            "loop_state.json", "training_args.bin"})
"""Files a training run keeps to resume, never part of a model."""
ADAPTER_CONFIG = "adapter_config.json"
MODEL_CARD = "README.md"


@dataclass(frozen=True)
class Member:
    name: str
    """Its path inside the archive (POSIX, relative)."""
    size: int
    source: Path | None = None
    """The file whose bytes it holds; None when it holds ``data``."""
    data: bytes = b""
    mtime: int = 0

    def header(self) -> bytes:
        info = tarfile.TarInfo(self.name)
        info.size, info.mode, info.mtime = self.size, 0o644, self.mtime
        return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


def folder_members(folder: Path, skip_dirs: Iterable[str] = (),
                   follow_links: bool = False) -> list[Member]:
    """The folder's files as archive members, sorted; ``skip_dirs``: top-level folders left out.

    The archive holds no link. With ``follow_links`` (an operator's folder: a hub cache's
    snapshot is made of links) a link to a file is sent as that file, else it is left out;
    links to folders are never followed."""
    skipped = set(skip_dirs)
    members = []
    for root, dirs, files in os.walk(folder):
        relative = Path(root).relative_to(folder)
        dirs[:] = sorted(d for d in dirs if not _internal(d) and not (
            relative == Path(".") and d in skipped))
        for name in sorted(files):
            path = Path(root) / name
            if (_internal(name) or name in TRAINING_STATE or not path.is_file()
                    or (path.is_symlink() and not follow_links)):
                continue
            stat = path.stat()
            members.append(Member((relative / name).as_posix(), stat.st_size, path,
                                  mtime=int(stat.st_mtime)))
    return sorted(members, key=lambda m: m.name)


def _internal(name: str) -> bool:
    return name.startswith(".") or ".tmp-" in name or name.endswith(".tmp")


def replace_member(members: list[Member], name: str, data: bytes) -> list[Member]:
    """``members`` with ``name``'s bytes replaced by ``data`` (when it is there)."""
    return [Member(m.name, len(data), None, data, m.mtime) if m.name == name else m
            for m in members]


def published_adapter(members: list[Member], base_model_id: str) -> list[Member]:
    """A peft adapter folder's members with the server's local path of its base model (peft
    writes it into ``adapter_config.json`` and its model card) replaced by the base's id."""
    config_member = next((m for m in members if m.name == ADAPTER_CONFIG and m.source), None)
    if config_member is None or config_member.source is None:
        return members
    config: dict[str, Any] = json.loads(config_member.source.read_text())
    local = config.get("base_model_name_or_path")
    config["base_model_name_or_path"] = base_model_id
    members = replace_member(members, ADAPTER_CONFIG,
                             (json.dumps(config, indent=2, sort_keys=True) + "\n").encode())
    card = next((m for m in members if m.name == MODEL_CARD and m.source), None)
    if local and card is not None and card.source is not None:
        text = card.source.read_text(errors="replace").replace(local, base_model_id)
        members = replace_member(members, MODEL_CARD, text.encode())
    return members


def _padding(size: int) -> int:
    return -size % BLOCK


def archive_size(members: list[Member]) -> int:
    """The exact length of `tar_stream` over ``members`` (for Content-Length)."""
    body = sum(len(m.header()) + m.size + _padding(m.size) for m in members) + 2 * BLOCK
    return body + -body % tarfile.RECORDSIZE


def tar_stream(members: list[Member]) -> Iterator[bytes]:
    """The archive, chunk by chunk, never whole in memory. A file that shrank since it was
    listed raises (the response is then cut short, which a client sees as an incomplete
    archive) rather than putting a member of the wrong length in it."""
    written = 0
    for member in members:
        header = member.header()
        yield header
        if member.source is None:
            yield member.data
        else:
            yield from _file_chunks(member.source, member.size)
        padding = b"\0" * _padding(member.size)
        yield padding
        written += len(header) + member.size + len(padding)
    end = 2 * BLOCK
    yield b"\0" * (end + -(written + end) % tarfile.RECORDSIZE)


def _file_chunks(path: Path, size: int) -> Iterator[bytes]:
    left = size
    with path.open("rb") as handle:
        while left:
            chunk = handle.read(min(CHUNK, left))
            if not chunk:
                raise OSError(f"{path} is shorter than when it was listed ({size} bytes)")
            left -= len(chunk)
            yield chunk


class UnsafeArchive(ValueError):
    """An archive member that unpacking refuses."""


def member_path(name: str) -> PurePosixPath:
    """``name`` as a path under the destination, or UnsafeArchive."""
    path = PurePosixPath(name)
    if path.is_absolute() or name.startswith("\\"):
        raise UnsafeArchive(f"refusing archive member {name!r}: an absolute path; only paths "
                            "inside the destination folder are allowed")
    if ".." in path.parts or "\\" in name:
        raise UnsafeArchive(f"refusing archive member {name!r}: its path leaves the "
                            "destination folder; only paths inside it are allowed")
    if not path.parts or path == PurePosixPath("."):
        raise UnsafeArchive(f"refusing archive member {name!r}: an empty path")
    return path


def safe_extract(stream: BinaryIO, destination: Path) -> list[str]:
    """Unpack the tar ``stream`` (read once, front to back) into the existing, empty folder
    ``destination``; the files' names. Plain files and folders only: a link, a device or a
    path that is absolute or climbs out with ``..`` raises UnsafeArchive, as does a name given
    twice. Files are written 0644, whatever mode the archive says."""
    names: list[str] = []
    seen: set[PurePosixPath] = set()
    root = destination.resolve()
    with tarfile.open(fileobj=stream, mode="r|") as archive:
        for info in archive:
            path = member_path(info.name)
            if not (info.isfile() or info.isdir()):
                raise UnsafeArchive(f"refusing archive member {info.name!r}: a "
                                    f"{_kind(info)}; only plain files and folders are allowed")
            if path in seen:
                raise UnsafeArchive(f"refusing archive member {info.name!r}: it appears twice")
            seen.add(path)
            target = root.joinpath(*path.parts)
            if root not in target.resolve().parents:
                raise UnsafeArchive(f"refusing archive member {info.name!r}: its path leaves "
                                    "the destination folder")
            if info.isdir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            source = archive.extractfile(info)
            assert source is not None  # a regular file
            with target.open("xb") as out:
                shutil.copyfileobj(source, out, CHUNK)
            target.chmod(0o644)
            names.append(path.as_posix())
    return names


def _kind(info: tarfile.TarInfo) -> str:
    if info.issym():
        return f"symbolic link to {info.linkname!r}"
    if info.islnk():
        return f"hard link to {info.linkname!r}"
    return "device, fifo or other special file"


def unpack_into(stream: BinaryIO, folder: Path, replace: bool = False) -> list[str]:
    """`safe_extract` into a scratch folder beside ``folder``, then move the files in: a
    refused or broken archive leaves ``folder`` as it was. ``folder`` must be missing or
    empty unless ``replace``, which overwrites the files the archive holds (and only them)."""
    if folder.exists() and not folder.is_dir():
        raise FileExistsError(f"{folder} exists and is not a folder")
    if folder.is_dir() and any(folder.iterdir()) and not replace:
        raise FileExistsError(f"{folder} is not empty; give an empty or new folder, or "
                              "--force to overwrite the files the model holds")
    folder.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".partial",
                                    dir=folder.parent))
    try:
        names = safe_extract(stream, scratch)
        folder.mkdir(exist_ok=True)
        for name in names:
            target = folder / name
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(scratch / name, target)
        return names
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
