"""The local artifact store: content addressing and atomic writes."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import pytest

from services.artifacts import LocalArtifactStore


class Exploding(io.BytesIO):
    def read(self, size: int | None = -1) -> bytes:
        if self.tell() > 10:
            raise OSError("disk went away")
        return super().read(4)


def test_blobs_are_content_addressed_and_deduplicated(tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path)
    digest, size = store.put_bytes(b"hello\nworld\n")
    assert digest == hashlib.sha256(b"hello\nworld\n").hexdigest() and size == 12
    assert store.put_bytes(b"hello\nworld\n") == (digest, 12)
    assert list(store.iter_lines(digest)) == [b"hello\n", b"world\n"]
    assert len(list((tmp_path / "blobs").rglob("*"))) == 2  # one folder, one blob


def test_a_failed_write_leaves_nothing_behind(tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path)
    with pytest.raises(OSError):
        store.put_stream(Exploding(b"x" * 100))
    assert not (tmp_path / "blobs").exists()
    assert list((tmp_path / "tmp").iterdir()) == []


def test_paths_cannot_escape_the_root(tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path)
    with pytest.raises(ValueError):
        store.directory("models", "..")
    with pytest.raises(ValueError):
        store.blob_path("../../etc/passwd")
    assert store.directory("models", "ftjob-1").is_dir()
