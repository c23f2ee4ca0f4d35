"""The supervisor on real child processes: one that dies is restarted after its delay and
keeps running; one that keeps dying is given up on after the policy's bound; a stop is not
followed by restarts."""

from __future__ import annotations

import sys
from pathlib import Path

from cli.supervisor import Part, RestartPolicy, Supervisor
from tests.conftest import wait_for

FAST = RestartPolicy(first_delay=0.05, max_delay=0.2, max_restarts=3, window=60)


def python(tmp_path: Path, name: str, code: str) -> Part:
    return Part(name, [sys.executable, "-c", code], {}, tmp_path / f"{name}.log")


def supervised(*parts: Part) -> tuple[Supervisor, list[str]]:
    said: list[str] = []
    return Supervisor({part.name: part for part in parts}, FAST, said.append), said


def checked_until(supervisor: Supervisor, done, message: str) -> None:  # type: ignore[no-untyped-def]
    """Run the supervisor's passes until `done()`."""
    wait_for(lambda: (supervisor.check(), done())[1], 30, interval=0.02, message=message)


def test_a_child_that_dies_once_is_restarted_and_stays_up(tmp_path: Path) -> None:
    """"Stays up" is a condition the child reports (it got past where it crashed and is
    sleeping), not a number of quick passes: the supervisor keeps checking until then."""
    marker, up = tmp_path / "crashed-once", tmp_path / "up"
    part = python(tmp_path, "flaky", f"import pathlib, sys, time\nm = pathlib.Path({str(marker)!r})\n"
                  "if not m.exists():\n    m.touch(); sys.exit(3)\n"
                  f"pathlib.Path({str(up)!r}).touch()\ntime.sleep(60)")
    supervisor, said = supervised(part)
    supervisor.start()
    first_pid = part.pid
    try:
        checked_until(supervisor, lambda: part.restarts == 1, "a restart")
        assert said == ["flaky exited with status 3; restarting in 0.05 s (restart 1)"]
        assert part.state == "running" and part.pid not in (None, first_pid)
        checked_until(supervisor, up.exists, "the restarted child to be up")
        supervisor.check()
        assert part.process is not None and part.process.poll() is None
        assert part.snapshot()["restarts"] == 1
    finally:
        supervisor.stop()
    assert part.process.poll() is not None and part.state == "stopped"


def test_a_crash_loop_is_given_up_on_and_the_others_keep_running(tmp_path: Path) -> None:
    crashing = python(tmp_path, "crashing", "import sys; sys.exit(7)")
    steady = python(tmp_path, "steady", "import time; time.sleep(60)")
    supervisor, said = supervised(crashing, steady)
    supervisor.start()
    try:
        checked_until(supervisor, lambda: crashing.state == "failed", "the crash loop to end")
        assert crashing.restarts == FAST.max_restarts and crashing.pid is None
        assert said[:3] == [f"crashing exited with status 7; restarting in {delay:g} s "
                            f"(restart {n})" for n, delay in ((1, 0.05), (2, 0.1), (3, 0.2))]
        assert said[3].startswith("crashing exited with status 7, 4 times in 60 s; giving up")
        for _ in range(10):
            assert not supervisor.check()
        assert steady.state == "running" and steady.process and steady.process.poll() is None
    finally:
        supervisor.stop()


def test_stopped_children_are_not_restarted(tmp_path: Path) -> None:
    part = python(tmp_path, "sleeper", "import time; time.sleep(60)")
    supervisor, said = supervised(part)
    supervisor.start()
    supervisor.stop()
    assert part.process is not None and part.process.returncode == -15
    assert not supervisor.check() and part.state == "stopped" and said == []
