"""The data folder's lock between real processes: a holder's record is what a second stack,
`status` and `stop` read; a holder killed with SIGKILL leaves a stale file that the next stack
takes over (with the dead stack's record), and a port its parts still hold is named with
them; `stop_stack` waits until the holder let go."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from cli.stack import embedded_stack
from cli.stack_lock import (
    LOCK_NAME,
    AlreadyRunning,
    StackError,
    StackLock,
    running_stack,
    stop_stack,
)
from services.settings import AlignSettings

HOLDER = """
import json, os, signal, sys, time
from pathlib import Path
from cli.stack_lock import StackLock

lock = StackLock.acquire(Path(sys.argv[1]))
lock.write({"pid": os.getpid(), "urls": {
    "api": "http://127.0.0.1:8000", "reward": "http://127.0.0.1:8001",
    "inference": "http://127.0.0.1:8002"}, "postgres": {"pid": 1, "started": True},
    "parts": json.loads(sys.argv[2])})
signal.signal(signal.SIGTERM, lambda *_: (lock.release(), sys.exit(0)))
print("holding", flush=True)
time.sleep(120)
"""


@pytest.fixture
def orphan() -> Iterator[subprocess.Popen[bytes]]:
    """A part the holder "started" that outlives it (as a killed stack's children do)."""
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield process
    process.kill()
    process.wait()


@pytest.fixture
def holder(tmp_path: Path, orphan: subprocess.Popen[bytes]) -> Iterator[subprocess.Popen[str]]:
    parts = json.dumps({"api": {"pid": orphan.pid}})
    process = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path), parts],
                               stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None and process.stdout.readline() == "holding\n"
    yield process
    process.kill()
    process.wait()


def test_a_held_folder_is_refused_with_the_holder_s_pid_and_ports(tmp_path: Path,
                                                                   holder) -> None:
    record = running_stack(tmp_path)
    assert record is not None and record["pid"] == holder.pid
    with pytest.raises(AlreadyRunning) as refused:
        StackLock.acquire(tmp_path)
    assert str(refused.value) == (f"alignd is already running on 8000-8002 (pid {holder.pid}); "
                                  "use it, or `alignd stop`")


def test_a_killed_holder_s_file_is_stale_and_taken_over(tmp_path: Path, holder) -> None:
    holder.kill()
    holder.wait()
    assert (tmp_path / LOCK_NAME).exists() and running_stack(tmp_path) is None
    lock = StackLock.acquire(tmp_path)
    assert lock.previous["pid"] == holder.pid and lock.previous["postgres"]["started"]
    lock.write({"pid": 1, "urls": {}})
    lock.write({"pid": 2})  # shorter than the last: still one JSON document
    assert running_stack(tmp_path) == {"pid": 2}
    lock.release()
    assert not (tmp_path / LOCK_NAME).exists() and running_stack(tmp_path) is None


def test_stop_signals_the_holder_and_waits_for_the_lock(tmp_path: Path, holder) -> None:
    record = stop_stack(tmp_path, timeout=30)
    assert record is not None and record["pid"] == holder.pid
    assert holder.wait(timeout=10) == 0 and running_stack(tmp_path) is None
    assert stop_stack(tmp_path) is None
    StackLock.acquire(tmp_path).release()


def test_a_dead_stack_s_ports_still_held_are_named_with_its_parts(tmp_path: Path, holder,
                                                                  orphan) -> None:
    holder.kill()
    holder.wait()
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        settings = AlignSettings(_env_file=None, data_dir=tmp_path, api_url=url)  # type: ignore[call-arg]
        with pytest.raises(StackError) as refused:
            embedded_stack(settings).claim()
    assert str(refused.value).startswith(f"port {url.rsplit(':', 1)[1]} (api, ALIGND_API_URL=")
    assert str(refused.value).endswith(f"a stack that died (pid {holder.pid}) may have left its "
                                       f"parts running: pids {orphan.pid}")
    assert StackLock.acquire(tmp_path).previous["pid"] == holder.pid  # kept for the next stack
