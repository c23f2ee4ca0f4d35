"""`alignd models download` over real HTTP: against the real api (another project's model, a
folder that is not empty, --force), and against a hostile server on loopback whose archives
try to write outside the folder (refused, nothing written) or that makes the client wait
(202 and Retry-After, then the archive). Real jobs, real merges: tests/trainer/
test_model_download.py."""

from __future__ import annotations

import io
import tarfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response

from services.web import ServerThread
from tests.api.test_models import Project, registered
from tests.cli.test_user import alignd
from tests.conftest import new_project


def tar_of(*members: tuple[str, bytes, bytes]) -> bytes:
    """(name, tar type, content or link target)."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as archive:
        for name, kind, data in members:
            info = tarfile.TarInfo(name)
            info.type = kind
            if kind == tarfile.REGTYPE:
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
            else:
                info.linkname = data.decode()
                archive.addfile(info)
    return out.getvalue()


CONFIG = ("config.json", tarfile.REGTYPE, b"{}")
ATTACKS = {
    "parent": tar_of(CONFIG, ("../escaped.txt", tarfile.REGTYPE, b"owned")),
    "nested-parent": tar_of(CONFIG, ("a/../../escaped.txt", tarfile.REGTYPE, b"owned")),
    "absolute": tar_of(CONFIG, ("/tmp/alignd-escaped.txt", tarfile.REGTYPE, b"owned")),
    "symlink": tar_of(CONFIG, ("escape", tarfile.SYMTYPE, b".."),
                      ("escape/escaped.txt", tarfile.REGTYPE, b"owned")),
    "hardlink": tar_of(CONFIG, ("passwd", tarfile.LNKTYPE, b"/etc/passwd")),
}
GOOD = tar_of(CONFIG, ("model.safetensors", tarfile.REGTYPE, b"weights"))


@pytest.fixture(scope="module")
def hostile_url() -> Iterator[str]:
    """A server that answers /v1/models/{attack}/content with that attack's archive, and
    /v1/models/slow/content?merged=true with 202 twice before a good archive."""
    app, asked = FastAPI(), {"slow": 0}

    @app.get("/v1/models/{name}/content")
    def content(name: str, merged: bool = False) -> Response:
        if name == "slow" and merged:
            asked["slow"] += 1
            if asked["slow"] <= 2:
                return JSONResponse({"object": "model.export", "model": name, "retry_after": 0,
                                     "status": "queued" if asked["slow"] == 1 else "running"},
                                    status_code=202, headers={"Retry-After": "0"})
        return Response(ATTACKS.get(name, GOOD), media_type="application/x-tar")

    with ServerThread(app) as server:
        yield server.url


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_an_archive_that_escapes_its_folder_is_refused_and_nothing_is_written(
        hostile_url: str, tmp_path: Path, attack: str) -> None:
    folder = tmp_path / "jail" / "model"
    result = alignd("models", "download", attack, str(folder), url=hostile_url, key="k")
    assert result.exit_code == 1, result.output
    assert "refusing archive member" in result.stderr and "nothing was written" in result.stderr
    assert not folder.exists() and list((tmp_path / "jail").iterdir()) == []
    assert not (tmp_path / "escaped.txt").exists()
    assert not Path("/tmp/alignd-escaped.txt").exists()


def test_a_merge_is_waited_for(hostile_url: str, tmp_path: Path) -> None:
    result = alignd("models", "download", "slow", str(tmp_path / "m"), "--merged",
                    url=hostile_url, key="k")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["config.json",
                                                                  "model.safetensors"]


def test_a_non_empty_folder_needs_force(hostile_url: str, tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "config.json").write_text("old")
    refused = alignd("models", "download", "good", str(tmp_path), url=hostile_url, key="k")
    assert refused.exit_code == 1
    assert "is not empty" in refused.stderr and "--force" in refused.stderr
    assert (tmp_path / "config.json").read_text() == "old"
    forced = alignd("models", "download", "good", str(tmp_path), "--force", url=hostile_url,
                    key="k")
    assert forced.exit_code == 0, forced.output
    assert (tmp_path / "config.json").read_text() == "{}"
    assert (tmp_path / "notes.txt").read_text() == "mine"  # only the model's files replaced


def test_another_project_s_model_is_not_found(api_url: str, admin: httpx.Client, key: str,
                                              database_url: str, artifact_root: Path,
                                              tmp_path: Path) -> None:
    other = Project(api_url, admin)
    model_id, _ = registered(database_url, artifact_root, other)
    other.http.close()
    result = alignd("models", "download", model_id, str(tmp_path / "m"), url=api_url, key=key)
    assert result.exit_code == 1
    assert result.stderr.strip() == f"error 404: model {model_id!r} does not exist"
    assert not (tmp_path / "m").exists()
    _, own_key = new_project(admin)
    listed = alignd("models", "-q", url=api_url, key=own_key)
    assert model_id not in listed.stdout
