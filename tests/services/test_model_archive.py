"""A model folder as a tar stream and back: what goes in (and what never does), the exact
length announced before streaming, and the unpacker refusing every member that would write
outside its folder or anything but a plain file — before it writes anything."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

from services.model_archive import (
    UnsafeArchive,
    archive_size,
    folder_members,
    published_adapter,
    safe_extract,
    tar_stream,
    unpack_into,
)


def model_folder(root: Path) -> Path:
    folder = root / "model"
    (folder / "members" / "m0").mkdir(parents=True)
    (folder / "config.json").write_text('{"architectures": ["LlamaForCausalLM"]}')
    (folder / "model.safetensors").write_bytes(bytes(range(256)) * 5000)  # > one 1 MiB chunk
    (folder / "members" / "m0" / "config.json").write_text("{}")
    for internal in ("optimizer.pt", "scheduler.pt", "rng_state.pt", "trainer_state.json"):
        (folder / internal).write_bytes(b"state")
    (folder / ".cache").mkdir()
    (folder / ".cache" / "lock").write_text("")
    (folder / "merged.tmp-1234").mkdir()
    (folder / "merged.tmp-1234" / "model.safetensors").write_bytes(b"half")
    (folder / "merged").mkdir()
    (folder / "merged" / "model.safetensors").write_bytes(b"whole")
    return folder


def streamed(members: list) -> bytes:  # type: ignore[type-arg]
    return b"".join(tar_stream(members))


def test_the_stream_is_a_tar_of_the_model_files_only(tmp_path: Path) -> None:
    folder = model_folder(tmp_path)
    members = folder_members(folder, skip_dirs=["merged"])
    data = streamed(members)
    assert len(data) == archive_size(members) and len(data) % tarfile.RECORDSIZE == 0
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        assert archive.getnames() == ["config.json", "members/m0/config.json",
                                      "model.safetensors"]
        assert all(info.isfile() and info.mode == 0o644 for info in archive.getmembers())
        weights = archive.extractfile("model.safetensors")
        assert weights is not None
        assert weights.read() == (folder / "model.safetensors").read_bytes()
    # without skip_dirs a folder named merged is part of the model (it is not an adapter's)
    assert "merged/model.safetensors" in [m.name for m in folder_members(folder)]


def test_a_file_linked_into_an_operator_s_folder_is_sent_as_a_file(tmp_path: Path) -> None:
    blob = tmp_path / "blob"
    blob.write_bytes(b"weights")
    folder = tmp_path / "snapshot"
    folder.mkdir()
    (folder / "model.safetensors").symlink_to(blob)  # as a hub cache's snapshot holds them
    (folder / "outside").symlink_to(tmp_path, target_is_directory=True)
    operators = folder_members(folder, follow_links=True)
    with tarfile.open(fileobj=io.BytesIO(streamed(operators))) as archive:
        assert [(i.name, i.isfile(), i.size) for i in archive.getmembers()] == [
            ("model.safetensors", True, 7)]
    assert folder_members(folder) == []  # a job's folder: a link there is nothing of the model


def test_an_adapter_names_its_base_by_id_not_by_the_server_s_path(tmp_path: Path) -> None:
    folder = tmp_path / "adapter"
    folder.mkdir()
    local = "/srv/alignd/models/base"
    (folder / "adapter_config.json").write_text(json.dumps(
        {"base_model_name_or_path": local, "r": 4}))
    (folder / "README.md").write_text(f"---\nbase_model: {local}\ntags:\n- base_model:adapter:"
                                      f"{local}\n---\n")
    members = published_adapter(folder_members(folder), "tiny-base")
    data = streamed(members)
    assert len(data) == archive_size(members)
    assert local.encode() not in data
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        config = json.loads(archive.extractfile("adapter_config.json").read())  # type: ignore[union-attr]
        card = archive.extractfile("README.md").read().decode()  # type: ignore[union-attr]
    assert config == {"base_model_name_or_path": "tiny-base", "r": 4}
    assert "base_model: tiny-base" in card and "base_model:adapter:tiny-base" in card


def hostile(*members: tuple[str, bytes | None, bytes]) -> bytes:
    """A tar whose members are (name, type, content): type None is a regular file."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as archive:
        for name, kind, content in members:
            info = tarfile.TarInfo(name)
            if kind is None:
                info.size = len(content)
                archive.addfile(info, io.BytesIO(content))
            else:
                info.type, info.linkname = kind, content.decode()
                archive.addfile(info)
    return out.getvalue()


GOOD = ("config.json", None, b"{}")


@pytest.mark.parametrize(("member", "why"), [
    (("../escaped.txt", None, b"x"), "leaves the destination"),
    (("sub/../../escaped.txt", None, b"x"), "leaves the destination"),
    (("/tmp/absolute.txt", None, b"x"), "absolute path"),
    (("link", tarfile.SYMTYPE, b"/etc/passwd"), "symbolic link"),
    (("hard", tarfile.LNKTYPE, b"config.json"), "hard link"),
    (("fifo", tarfile.FIFOTYPE, b""), "special file"),
    (("dev", tarfile.CHRTYPE, b""), "special file"),
    (("config.json", None, b"{}"), "appears twice"),
])
def test_unpacking_refuses_members_that_escape_or_are_not_plain_files(
        tmp_path: Path, member: tuple[str, bytes | None, bytes], why: str) -> None:
    destination = tmp_path / "out"
    with pytest.raises(UnsafeArchive, match=why):
        unpack_into(io.BytesIO(hostile(GOOD, member)), destination)
    assert list(tmp_path.iterdir()) == []  # nothing written, not even the good member


def test_a_link_then_a_file_through_it_cannot_write_outside(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    archive = hostile(("sub", tarfile.SYMTYPE, str(outside).encode()),
                      ("sub/owned.txt", None, b"x"))
    destination = tmp_path / "out"
    destination.mkdir()
    with pytest.raises(UnsafeArchive):
        safe_extract(io.BytesIO(archive), destination)
    assert list(outside.iterdir()) == []


def test_unpacking_fills_a_new_folder_and_refuses_a_non_empty_one(tmp_path: Path) -> None:
    folder = model_folder(tmp_path)
    data = streamed(folder_members(folder, skip_dirs=["merged"]))
    destination = tmp_path / "download"
    names = unpack_into(io.BytesIO(data), destination)
    assert sorted(names) == ["config.json", "members/m0/config.json", "model.safetensors"]
    assert (destination / "model.safetensors").read_bytes() == \
        (folder / "model.safetensors").read_bytes()
    assert oct((destination / "config.json").stat().st_mode & 0o777) == "0o644"

    (destination / "config.json").write_text("old")
    (destination / "mine.txt").write_text("kept")
    with pytest.raises(FileExistsError, match="not empty"):
        unpack_into(io.BytesIO(data), destination)
    assert (destination / "config.json").read_text() == "old"
    unpack_into(io.BytesIO(data), destination, replace=True)
    assert (destination / "config.json").read_text() == (folder / "config.json").read_text()
    assert (destination / "mine.txt").read_text() == "kept"
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".partial")] == []
