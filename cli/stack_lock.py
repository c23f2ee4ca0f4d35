"""One embedded stack per data folder: `<data_dir>/alignd.lock`, held with flock for the
stack's life and holding its record (owner pid, urls, start time, each part's pid and
restarts) as JSON, so that a second `alignd up`, `alignd status` and `alignd stop` (other
processes) can read what runs there. The kernel drops the flock when the owner dies, so a
file left behind by a killed stack is stale, not held."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

LOCK_NAME = "alignd.lock"

Record = dict[str, Any]


class StackError(Exception):
    """The stack cannot start; the message says why and what to do."""


class AlreadyRunning(StackError):
    """Another live process holds the data folder's lock."""

    def __init__(self, record: Record) -> None:
        self.record = record
        super().__init__(already_running_message(record))


def already_running_message(record: Record) -> str:
    return (f"alignd is already running on {port_span(record.get('urls', {}))} "
            f"(pid {record.get('pid', '?')}); use it, or `alignd stop`")


def port_span(urls: dict[str, str]) -> str:
    """"8000-8002" for consecutive ports, else "8000, 8005, 8001" in the stack's order."""
    ports = [int(url.rsplit(":", 1)[-1]) for url in urls.values()]
    if ports and sorted(ports) == list(range(min(ports), max(ports) + 1)):
        return f"{min(ports)}-{max(ports)}" if len(ports) > 1 else str(ports[0])
    return ", ".join(map(str, ports)) or "unknown ports"


class StackLock:
    """The data folder's lock, held by this process until release()."""

    def __init__(self, path: Path, fd: int, previous: Record) -> None:
        self.path, self._fd, self._written = path, fd, 0
        self.previous = previous
        """The record a stack that died left in the file ({} if none): its parts may live on."""

    @classmethod
    def acquire(cls, data_dir: Path) -> StackLock:
        """Take the lock, or raise AlreadyRunning with the holder's record."""
        data_dir.mkdir(parents=True, exist_ok=True)
        path = data_dir / LOCK_NAME
        for _ in range(50):
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                record = _read_json(path)
                if record and pid_alive(record.get("pid")):
                    raise AlreadyRunning(record) from None
                time.sleep(0.1)  # the holder is just starting, just stopping, or a reader
                continue
            if _same_file(fd, path):  # not a file its last owner unlinked while we opened it
                previous = _read_json(path, attempts=1)
                os.ftruncate(fd, 0)
                return cls(path, fd, previous)
            os.close(fd)
        raise AlreadyRunning(_read_json(path))

    def write(self, record: Record) -> None:
        """Rewrite the record in place (padded to the old length: the file is never empty
        while a reader looks, and the lock stays on the same file)."""
        data = json.dumps(record, indent=1).encode()
        os.pwrite(self._fd, data.ljust(self._written), 0)
        self._written = max(len(data), self._written)

    def give_back(self) -> None:
        """Let go without having started anything: a dead stack's record stays for the next."""
        if self.previous:
            self.write(self.previous)
            os.close(self._fd)
            self._fd = -1
        else:
            self.release()

    def release(self) -> None:
        if self._fd < 0:
            return
        self.path.unlink(missing_ok=True)  # before unlocking: a waiter re-checks the path
        os.close(self._fd)
        self._fd = -1


def running_stack(data_dir: Path) -> Record | None:
    """The record of the stack that runs on this data folder, or None."""
    path = data_dir / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _read_json(path) or {"pid": None, "urls": {}}
    else:
        return None  # nobody holds it: a file left by a stack that died
    finally:
        os.close(fd)


def stop_stack(data_dir: Path, timeout: float = 90.0) -> Record | None:
    """SIGTERM the data folder's stack and wait until it has let go of the lock; returns its
    record (None if none ran). Raises TimeoutError if it still runs after `timeout`."""
    record = running_stack(data_dir)
    if record is None:
        return None
    if record.get("pid"):
        try:
            os.kill(record["pid"], signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    while running_stack(data_dir) is not None:
        if time.monotonic() > deadline:
            raise TimeoutError(f"alignd (pid {record.get('pid')}) still runs after {timeout:.0f} s")
        time.sleep(0.2)
    return record


def _read_json(path: Path, attempts: int = 20) -> Record:
    for _ in range(attempts):  # a reader can land between a write's pieces: read again
        try:
            return dict(json.loads(path.read_text()))
        except FileNotFoundError:
            return {}
        except ValueError:
            time.sleep(0.05)
    return {}


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(fd), path.stat())
    except FileNotFoundError:
        return False


def pid_alive(pid: object) -> bool:
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
