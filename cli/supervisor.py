"""Child processes kept running, the way a container's restart policy keeps containers: a
child that dies is reported with its exit status and started again after a delay that doubles
with each recent restart; one that keeps dying (more than `max_restarts` exits within
`window`) is given up on and marked `failed`, as supervisord marks a program FATAL, while the
others keep running."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class RestartPolicy:
    first_delay: float = 1.0
    """Seconds before a child's first restart; each further exit within `window` doubles it."""
    max_delay: float = 30.0
    """The longest wait before a restart."""
    max_restarts: int = 5
    """Exits within `window` a child is restarted after; one more and it is given up on."""
    window: float = 300.0
    """Seconds an exit counts against a child: one that ran this long starts over at 1 s."""

    def delay(self, recent_exits: int) -> float:
        """The wait before restarting a child that exited `recent_exits` times (>= 1)."""
        return min(self.first_delay * 2 ** (recent_exits - 1), self.max_delay)


@dataclass
class Part:
    """One supervised child: its command, and how it has fared so far."""

    name: str
    command: list[str]
    env: dict[str, str]
    log_path: Path
    port: int | None = None
    process: subprocess.Popen[bytes] | None = None
    state: str = "stopped"
    """running | restarting (waiting out its delay) | failed (given up on) | stopped"""
    started_at: float = 0.0
    """Wall-clock time the current process started."""
    restarts: int = 0
    exits: list[float] = field(default_factory=list)
    """Monotonic times of the exits that still count against it (within the window)."""
    restart_at: float = 0.0

    def spawn(self) -> None:
        with self.log_path.open("ab") as log:  # the child keeps its own copy of the file
            # A session of its own: the terminal's Ctrl-C reaches the stack, which stops the
            # children in order, and a stop reaches the child's own children too.
            self.process = subprocess.Popen(self.command, env=self.env, stdout=log,
                                            stderr=subprocess.STDOUT, start_new_session=True)
        self.state, self.started_at = "running", time.time()

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process and self.state == "running" else None

    def snapshot(self) -> dict[str, Any]:
        return {"pid": self.pid, "port": self.port, "state": self.state,
                "started_at": self.started_at, "restarts": self.restarts,
                "log": str(self.log_path)}


@dataclass
class Supervisor:
    parts: dict[str, Part]
    policy: RestartPolicy
    say: Callable[[str], None]
    """Where restarts and give-ups are reported (the console and the stack's log)."""

    def start(self) -> None:
        for part in self.parts.values():
            part.spawn()

    def check(self) -> bool:
        """One pass: note children that exited, restart those whose delay is over. True when
        anything changed."""
        now, changed = time.monotonic(), False
        for part in self.parts.values():
            if part.state == "running" and part.process and part.process.poll() is not None:
                self._exited(part, part.process.returncode, now)
                changed = True
            elif part.state == "restarting" and now >= part.restart_at:
                part.restarts += 1
                part.spawn()
                changed = True
        return changed

    def _exited(self, part: Part, status: int, now: float) -> None:
        part.exits = [t for t in part.exits if now - t < self.policy.window] + [now]
        if len(part.exits) > self.policy.max_restarts:
            part.state = "failed"
            self.say(f"{part.name} exited with status {status}, {len(part.exits)} times in "
                     f"{self.policy.window:.0f} s; giving up on it (see {part.log_path})")
            return
        delay = self.policy.delay(len(part.exits))
        part.state, part.restart_at = "restarting", now + delay
        self.say(f"{part.name} exited with status {status}; restarting in {delay:g} s "
                 f"(restart {part.restarts + 1})")

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM every running child's process group, then SIGKILL what is left after
        `timeout`. Nothing is restarted from here on."""
        running = [p for p in self.parts.values() if p.state == "running" and p.process]
        for part in self.parts.values():
            part.state = "stopped"
        for part in running:
            _signal_group(part, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for part in running:
            assert part.process is not None
            try:
                part.process.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                _signal_group(part, signal.SIGKILL)
                part.process.wait()


def _signal_group(part: Part, signum: int) -> None:
    assert part.process is not None
    try:
        os.killpg(part.process.pid, signum)
    except ProcessLookupError:
        pass
