"""The artifact store: content-addressed blobs (uploaded files) and directories (checkpoints,
models). `ArtifactStore` is the interface; `LocalArtifactStore` keeps everything under one
root on a local or shared volume. An object store can implement the same protocol later."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, Protocol

CHUNK = 1024 * 1024


class ArtifactStore(Protocol):
    def put_stream(self, stream: BinaryIO) -> tuple[str, int]:
        """Store the stream's bytes; return (sha256 hex, size)."""
        ...

    def open(self, digest: str) -> BinaryIO: ...

    def exists(self, digest: str) -> bool: ...

    def delete(self, digest: str) -> None: ...

    def directory(self, *parts: str) -> Path:
        """A local directory for a tree artifact (checkpoint, model), created if missing."""
        ...


class LocalArtifactStore:
    def __init__(self, root: Path):
        self.root = root.expanduser()
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "tmp").mkdir(exist_ok=True)

    def blob_path(self, digest: str) -> Path:
        if len(digest) != 64 or not all(c in "0123456789abcdef" for c in digest):
            raise ValueError(f"not a sha256 hex digest: {digest!r}")
        return self.root / "blobs" / digest[:2] / digest

    def put_stream(self, stream: BinaryIO) -> tuple[str, int]:
        hasher, size = hashlib.sha256(), 0
        # Write to a temporary file beside the target, then rename: readers never see a partial blob.
        with tempfile.NamedTemporaryFile(dir=self.root / "tmp", delete=False) as tmp:
            try:
                while chunk := stream.read(CHUNK):
                    hasher.update(chunk)
                    tmp.write(chunk)
                    size += len(chunk)
                tmp.flush()
                os.fsync(tmp.fileno())
            except BaseException:
                os.unlink(tmp.name)
                raise
        digest = hasher.hexdigest()
        target = self.blob_path(digest)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp.name, target)
        return digest, size

    def put_bytes(self, data: bytes) -> tuple[str, int]:
        import io

        return self.put_stream(io.BytesIO(data))

    def open(self, digest: str) -> BinaryIO:
        return self.blob_path(digest).open("rb")

    def exists(self, digest: str) -> bool:
        return self.blob_path(digest).exists()

    def iter_lines(self, digest: str) -> Iterator[bytes]:
        with self.open(digest) as handle:
            yield from handle

    def delete(self, digest: str) -> None:
        self.blob_path(digest).unlink(missing_ok=True)

    def directory(self, *parts: str) -> Path:
        for part in parts:
            if not part or part in (".", "..") or "/" in part:
                raise ValueError(f"bad artifact path component: {part!r}")
        path = self.root.joinpath(*parts)
        path.mkdir(parents=True, exist_ok=True)
        return path

    def remove_directory(self, *parts: str) -> None:
        shutil.rmtree(self.root.joinpath(*parts), ignore_errors=True)

    def remove_tree(self, path: Path) -> bool:
        """Remove ``path`` if it is a folder inside this store (never the operator's model
        folders or anything else outside it); whether it did."""
        root, target = self.root.resolve(), path.resolve()
        if target == root or root not in target.parents or not target.is_dir():
            return False
        shutil.rmtree(target, ignore_errors=True)
        return True
