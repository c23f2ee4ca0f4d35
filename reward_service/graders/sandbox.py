"""Run `python` graders' user code in a child process, never in the service's.

One child grades a batch item by item, so the interpreter starts once per batch and the
source compiles once per child. Each child runs in namespaces of its own (network, mounts,
processes: see _runner.py), so it reaches no socket, no other run's files and none of the
service's data, and nothing it forks outlives it. It drops root for a uid no other run has,
lives under CPU, address-space, file-size and process-count limits, works in a fresh directory
(one per item, on the run's own tmpfs) and sees a minimal environment: no ALIGND_* settings or
other secrets. The parent enforces the wall-clock limit; when a child dies or overruns, that
item records why, and a fresh child takes the rest of the batch. Nothing the user's code does
raises in the caller."""

from __future__ import annotations

import base64
import json
import os
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, Self

from reward_service.graders.outcome import GradeOutcome
from reward_service.graders.syscalls import grader_filter_or_reason

MiB = 2**20
RUNNER = Path(__file__).with_name("_runner.py")
NOBODY = 65534
ISOLATING = ("net", "mount", "pid")
"""The namespaces a run needs under `isolation="required"`."""
FRESH_UIDS = (1_000_000, 2_000_000)
"""The uids a run is given one of (at random) when it gets a uid of its own: no account has
them, so no file on the host belongs to them and no two concurrent runs share one."""


@dataclass(frozen=True)
class SandboxLimits:
    """Per-item limits for user grader code."""

    cpu_seconds: int = 2
    """CPU seconds per item (RLIMIT_CPU). The kernel counts whole seconds, so an item may
    get up to a second more."""
    memory_bytes: int = 512 * MiB
    """Address space of the child process (RLIMIT_AS), interpreter included."""
    wall_seconds: float = 5.0
    """Wall-clock seconds per item, enforced by the parent killing the child."""
    request_seconds: float = 120.0
    """Wall-clock seconds for all of one request's items together: items not begun by then
    fail saying so, so a request of 4,096 slow items cannot hold a grading thread for hours
    (an item begun runs to its own `wall_seconds`)."""
    load_seconds: float = 10.0
    """Wall-clock seconds for the child to start (interpreter, namespaces) and load the
    source, its top-level code included, enforced the same way. Not an item's: on a busy
    host an interpreter's start alone can take more than a second."""
    file_bytes: int = 64 * MiB
    """Largest file the code may write (RLIMIT_FSIZE), so it cannot fill the disk."""
    run_as_uid: int | Literal["fresh"] | None = "fresh"
    """The uid (and gid) the child drops to when the service runs as root: "fresh", one of
    FRESH_UIDS per run, so that runs cannot signal or read each other; a number, that uid
    (NOBODY, say); None keeps root, which lets user code read the service's files and raise
    its own limits."""
    max_processes: int = 16
    """Processes (and threads) the run's uid may have at once (RLIMIT_NPROC): a fork bomb
    stops there."""
    isolation: Literal["required", "best_effort"] = "required"
    """"required": code runs only in network, mount and PID namespaces of its own, and where
    the kernel or the container refuses them every item fails saying so. "best_effort" runs
    it anyway on the fallback (rlimits, and an audit hook refusing sockets, which code that
    calls libc through ctypes gets past): for hosts whose operator accepts that."""

    def __post_init__(self) -> None:
        if self.cpu_seconds < 1:
            raise ValueError(f"cpu_seconds must be a whole number >= 1, got {self.cpu_seconds}")
        if self.memory_bytes < 64 * MiB:
            raise ValueError(f"memory_bytes must be >= 64 MiB for the interpreter, got "
                             f"{self.memory_bytes}")
        if self.wall_seconds <= 0:
            raise ValueError(f"wall_seconds must be > 0, got {self.wall_seconds}")
        if self.request_seconds <= 0:
            raise ValueError(f"request_seconds must be > 0, got {self.request_seconds}")
        if self.load_seconds <= 0:
            raise ValueError(f"load_seconds must be > 0, got {self.load_seconds}")


def run_python_grader(
    source: str, samples: list[str], items: list[dict[str, Any]], limits: SandboxLimits
) -> list[GradeOutcome]:
    """Grade every (sample, item) with `source`'s grade(); one outcome per item, in order."""
    outcomes: list[GradeOutcome] = []
    deadline = time.monotonic() + limits.request_seconds
    try:
        while len(outcomes) < len(items):
            if time.monotonic() >= deadline:
                outcomes += [GradeOutcome.failed(
                    f"the request's grading time ({limits.request_seconds:g} s) ran out "
                    "before this item")] * (len(items) - len(outcomes))
                break
            with _Child(source, limits) as child:
                failure = child.start()
                if failure is not None:
                    # Loading the source fails the same way every time: no point retrying.
                    outcomes += [GradeOutcome.failed(failure)] * (len(items) - len(outcomes))
                    break
                _grade_until_child_lost(child, samples, items, outcomes, deadline)
    except Exception as exc:  # noqa: BLE001 - the service must stay up whatever happens
        failure = f"grader sandbox failed: {type(exc).__name__}: {exc}"
        outcomes += [GradeOutcome.failed(failure)] * (len(items) - len(outcomes))
    return outcomes


def _grade_until_child_lost(
    child: _Child, samples: list[str], items: list[dict[str, Any]], outcomes: list[GradeOutcome],
    deadline: float,
) -> None:
    while len(outcomes) < len(items) and time.monotonic() < deadline:
        index = len(outcomes)
        outcome, alive = child.grade({"output_text": samples[index]}, items[index])
        outcomes.append(outcome)
        if not alive:
            return


class _Child:
    """One runner process and its temporary directory."""

    def __init__(self, source: str, limits: SandboxLimits) -> None:
        self.source = source
        self.limits = limits
        self.uid = (FRESH_UIDS[0] + secrets.randbelow(FRESH_UIDS[1] - FRESH_UIDS[0])
                    if limits.run_as_uid == "fresh" else limits.run_as_uid)
        self.workdir = tempfile.mkdtemp(prefix="alignd-grader-")
        self.buffer = b""
        self.filter_missing: str | None = None
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def start(self) -> str | None:
        """Start the runner and load the source; the reason it failed, or None."""
        if os.getuid() == 0 and self.uid is not None:
            try:
                os.chown(self.workdir, self.uid, self.uid)  # used where mounts are not private
            except OSError:  # root of a user namespace that maps no other uid: none to become
                self.uid = None
        self.process = subprocess.Popen(
            [sys.executable, "-I", str(RUNNER)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            cwd=self.workdir, env=_minimal_env(self.workdir), start_new_session=True,
        )
        program, self.filter_missing = grader_filter_or_reason()
        config = {"source": self.source, "workdir": self.workdir, **asdict(self.limits),
                  "run_as_uid": self.uid,
                  "seccomp": base64.b64encode(program).decode() if program else None}
        reply = self._exchange(config, self.limits.load_seconds)
        if "ready" in reply:
            return self._refusal(reply.get("namespaces") or [], reply.get("seccomp") is True)
        if "lost" in reply:
            return f"loading the source failed: {reply['error']}"
        return str(reply.get("fatal"))

    def _refusal(self, namespaces: list[str], filtered: bool) -> str | None:
        """Why this child may not grade under the limits' isolation, or None."""
        if self.limits.isolation == "best_effort" or (set(ISOLATING) <= set(namespaces)
                                                     and filtered):
            return None
        if set(ISOLATING) <= set(namespaces):
            return ("python graders are refused here: their syscall filter could not be "
                    f"put in place ({self.filter_missing or 'the kernel refused it'}); the "
                    "reward service needs libseccomp (Debian's libseccomp2) and the "
                    "pyseccomp package, or ALIGND_PYTHON_GRADER_ISOLATION=best_effort")
        return ("python graders are refused here: this reward service cannot give them "
                f"namespaces of their own ({', '.join(ISOLATING)}; it got "
                f"{', '.join(namespaces) or 'none'}). Its operator can allow user namespaces "
                "(or run it as root), or accept weaker isolation with "
                "ALIGND_PYTHON_GRADER_ISOLATION=best_effort")

    def grade(self, sample: dict[str, str], item: dict[str, Any]) -> tuple[GradeOutcome, bool]:
        """Grade one item; the outcome and whether this child can take the next one. Each
        item carries a fresh nonce that its reply must echo: user code can write to the reply
        pipe, but cannot know a later item's nonce, so it cannot answer for later items; a
        reply without this item's nonce ends the child."""
        nonce = secrets.token_hex(16)
        reply = self._exchange({"sample": sample, "item": item, "nonce": nonce},
                               self.limits.wall_seconds)
        if "lost" not in reply and reply.get("nonce") != nonce:
            reply = self._lost("the grader wrote to its reply channel itself (a reply that "
                               "was not this item's); the item is not scored")
        if isinstance(reply.get("score"), float):
            return GradeOutcome(score=reply["score"]), True
        return GradeOutcome.failed(str(reply.get("error"))), "lost" not in reply

    def _exchange(self, message: dict[str, Any], seconds: float) -> dict[str, Any]:
        """Send one line and wait, up to ``seconds`` of wall-clock time, for the reply line."""
        assert self.process is not None and self.process.stdin is not None
        try:
            payload = json.dumps(message, default=str) + "\n"
            self.process.stdin.write(payload.encode())
            self.process.stdin.flush()
        except (BrokenPipeError, OSError):
            return self._lost(self._death_reason())
        line = self._read_line(time.monotonic() + seconds)
        if line is None:
            return self._lost(self._death_reason())
        if line == b"":
            return self._lost(f"timed out after {seconds} s")
        try:
            reply = json.loads(line)
        except ValueError:
            return self._lost("grader process sent an unreadable reply")
        return reply if isinstance(reply, dict) else self._lost("grader process misbehaved")

    def _read_line(self, deadline: float) -> bytes | None:
        """A full line; b"" if the deadline passed; None if the child closed its output."""
        assert self.process is not None and self.process.stdout is not None
        fd = self.process.stdout.fileno()
        with selectors.DefaultSelector() as selector:
            selector.register(fd, selectors.EVENT_READ)
            while b"\n" not in self.buffer:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not selector.select(remaining):
                    return b""
                chunk = os.read(fd, 65536)
                if not chunk:
                    return None
                self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line

    def _lost(self, reason: str) -> dict[str, Any]:
        self.close()
        return {"error": reason, "lost": True}

    def _death_reason(self) -> str:
        assert self.process is not None
        try:
            code = self.process.wait(timeout=self.limits.wall_seconds)
        except subprocess.TimeoutExpired:
            return f"timed out after {self.limits.wall_seconds} s"
        return _describe_exit(code, self.limits)

    def close(self) -> None:
        """Kill the child's whole process group and remove its directory."""
        if self.process is not None:
            if self.process.poll() is None:
                try:
                    os.killpg(self.process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            self.process.wait()
            for pipe in (self.process.stdin, self.process.stdout):
                if pipe is not None:
                    pipe.close()
        shutil.rmtree(self.workdir, ignore_errors=True)


def _describe_exit(code: int, limits: SandboxLimits) -> str:
    if code == -signal.SIGXCPU:
        return f"exceeded CPU time limit ({limits.cpu_seconds} s)"
    if code in (-signal.SIGKILL, -signal.SIGSEGV, -signal.SIGABRT, -signal.SIGBUS):
        limit = limits.memory_bytes // MiB
        name = signal.Signals(-code).name
        return f"grader process died ({name}); exceeded memory limit ({limit} MiB)?"
    if code < 0:
        return f"grader process died ({signal.Signals(-code).name})"
    return f"grader process exited with code {code}"


def _minimal_env(workdir: str) -> dict[str, str]:
    """Only what an interpreter needs: the service's environment holds secrets."""
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "HOME": workdir,
        "TMPDIR": workdir,
        # BLAS thread pools reserve address space per thread; one thread fits the limit.
        "OPENBLAS_NUM_THREADS": "1",
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }
