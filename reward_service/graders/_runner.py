"""The `python` grader's child process. The parent (sandbox.py) starts it as
`python -I _runner.py`, a script rather than a module, so it imports nothing of alignd's and
nothing but the standard library before user code runs.

Where the kernel lets it (as root, or as a plain uid inside a user namespace of its own), the
runner leaves the host's network, mount table and process tree: it unshares those namespaces
and forks the namespace's init, which makes an otherwise empty root holding only what the
interpreter needs, read-only (`_hide_host`), with a fresh /proc and a private tmpfs /tmp, and
forks the grading process. When the grading process ends, or the
parent kills the runner, init exits and the kernel kills every process left in the namespace:
nothing user code forks, even after setsid(), outlives the run. Each exit is passed up, so the
parent sees the grading process's own status (a death by SIGXCPU stays one).

Protocol, JSON lines on private copies of stdin/stdout (fds 0 and 1 are pointed at /dev/null
so that the user's print() and input() cannot corrupt it):
  parent -> {"source", "cpu_seconds", "memory_bytes", "file_bytes", "max_processes",
             "run_as_uid", "workdir", "seccomp" (BPF, base64, or null)}
  child  -> {"ready": true, "network": "netns" | "audit-hook", "namespaces": [...],
             "seccomp": whether the syscall filter is in place}
            or {"fatal": message}
  parent -> {"sample": {...}, "item": {...}, "nonce"}  (repeated)
  child  -> {"score": float, "nonce"} or {"error": message, "nonce"}  (one per item)
"""

import base64
import ctypes
import importlib
import json
import math
import numbers
import os
import resource
import shutil
import signal
import sys
import sysconfig
import traceback
from collections.abc import Callable
from typing import Any, TextIO

CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 0x1, 0x2, 0x4, 0x8
MS_REC, MS_PRIVATE = 0x4000, 1 << 18
PR_SET_PDEATHSIG = 1
PR_SET_NO_NEW_PRIVS = 38
PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 22, 2
SIGKILL = 9
MAX_MESSAGE = 500


def main() -> None:
    """Isolate, load the source once, then grade items until the parent closes stdin."""
    reader, writer = _claim_stdio()
    config = json.loads(reader.readline())
    network, namespaces, filtered = _isolate(config)
    try:
        grade = _load(config["source"], config)
    except BaseException as exc:  # noqa: BLE001 - report anything, then stop
        _send(writer, {"fatal": f"loading the source failed: {_describe(exc, config)}"})
        return
    _send(writer, {"ready": True, "network": network, "namespaces": namespaces,
                   "seccomp": filtered})
    for number, line in enumerate(reader):
        request = json.loads(line)
        nonce = request.pop("nonce")  # echoed: a reply user code forged cannot carry it
        _send(writer, {**_grade_one(grade, request, config, number), "nonce": nonce})


def _claim_stdio() -> tuple[TextIO, TextIO]:
    reader = os.fdopen(os.dup(0), "r", encoding="utf-8")
    writer = os.fdopen(os.dup(1), "w", encoding="utf-8")
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    return reader, writer


def _send(writer: TextIO, message: dict[str, Any]) -> None:
    writer.write(json.dumps(message) + "\n")
    writer.flush()


def _isolate(config: dict[str, Any]) -> tuple[str, list[str], bool]:
    """Leave the host's network, mounts and processes where allowed, cap resources, then drop
    root. Returns in the process that grades: (network, namespaces, whether the syscall filter
    is in place). Order matters: unshare and mount need
    CAP_SYS_ADMIN and raising limits CAP_SYS_RESOURCE, both lost with root."""
    libc = ctypes.CDLL(None, use_errno=True)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    libc.prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0)  # gone with the service
    if libc.unshare(CLONE_NEWNET | CLONE_NEWNS | CLONE_NEWPID) == 0:
        namespaces = ["net", "mount", "pid"]
    elif _enter_user_namespace(libc):  # unprivileged: root in a namespace of its own instead
        namespaces = ["user", "net", "mount", "pid"]
        config["run_as_uid"] = None  # the one uid mapped is the service's; there is no other
    elif libc.unshare(CLONE_NEWNET) == 0:
        namespaces = ["net"]
    else:
        namespaces = []
    network = "netns" if "net" in namespaces else _block_sockets()
    if "pid" in namespaces:
        _fork_and_wait(as_init=False)  # returns in the namespace's init (pid 1)
        libc.prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0)
        _hide_host(libc, config)
        _fork_and_wait(as_init=True)  # returns in the grading process (pid 2)
    resource.setrlimit(resource.RLIMIT_AS, (config["memory_bytes"], config["memory_bytes"]))
    resource.setrlimit(resource.RLIMIT_FSIZE, (config["file_bytes"], config["file_bytes"]))
    if os.getuid() == 0 and config["run_as_uid"] is not None:
        if not _readable_by_others(sysconfig.get_paths()["stdlib"]):
            _preload_stdlib()  # the user we become could not import it later
        uid = config["run_as_uid"]
        # With a uid of its own per run, the processes of this uid are this run's alone.
        resource.setrlimit(resource.RLIMIT_NPROC,
                           (config["max_processes"], config["max_processes"]))
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
    if "user" in namespaces or os.getuid() == 0:
        # Root in its namespace (or root with no uid to become: a service in a user
        # namespace that maps only root) could otherwise unmount the covers.
        _drop_capabilities(libc)
    # No setuid binary may give the code privileges back; die with the parent (this is
    # cleared by setuid, hence after it).
    libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
    libc.prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0)
    os.chdir(config["workdir"])
    os.environ["HOME"] = os.environ["TMPDIR"] = config["workdir"]
    # last: the filter refuses what the set-up used
    return network, namespaces, _filter_syscalls(libc, config.get("seccomp"))


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def _filter_syscalls(libc: Any, program: str | None) -> bool:
    """Install the service's seccomp filter (BPF that libseccomp compiled, base64; see
    graders/syscalls.py); whether it is in place. Needs no_new_privs, set just before."""
    if not program:
        return False
    code = base64.b64decode(program)
    buffer = ctypes.create_string_buffer(code, len(code))
    fprog = _SockFprog(len(code) // 8, ctypes.cast(buffer, ctypes.c_void_p))
    return bool(libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0) == 0)


SANDBOX_TMP = "/tmp"
"""The run's own tmpfs; its working folder is inside."""
LIBRARIES = ("/usr/lib", "/usr/lib64", "/lib", "/lib64", "/usr/lib32", "/lib32")
"""Where the interpreter's shared libraries (libc, libm, libffi, libssl, ...) live: bound
read-only beside the interpreter (a symlink among them, as merged /usr has, stays one)."""
DEVICES = ("null", "zero", "urandom", "random")
SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "ppc64le": 203, "s390x": 217}
MS_BIND, MS_REMOUNT = 0x1000, 0x20
MNT_DETACH = 2


def _hide_host(libc: Any, config: dict[str, Any]) -> None:
    """In the new mount namespace (as root): an otherwise empty root holding only what the
    interpreter needs, read-only (its own folder with the standard library, the shared
    libraries), a /proc of this process tree, four /dev nodes and a private tmpfs /tmp with
    the working folder. Nothing else of the host is there to list or open: the service's
    checkouts, /etc, /opt, users' homes, sockets. The new root is a tmpfs mounted on the
    parent's scratch folder (in this namespace only), then made the root with pivot_root."""
    _mount(libc, None, "/", None, MS_REC | MS_PRIVATE)
    root = os.path.realpath(config["workdir"])
    _mount(libc, "tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=0755")
    interpreter = {os.path.realpath(p) for p in (sys.base_prefix,
                                                 sysconfig.get_paths()["stdlib"])}
    exposed: list[str] = []
    for path in sorted(interpreter | set(LIBRARIES)):
        if not any(path.startswith(folder + "/") for folder in exposed):
            _expose(libc, root, path)
            exposed.append(path)
    os.mkdir(f"{root}/proc")
    _mount(libc, "proc", f"{root}/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    os.mkdir(f"{root}/dev", 0o755)
    for name in DEVICES:
        open(f"{root}/dev/{name}", "w").close()  # a mount point for the host's node
        _mount(libc, f"/dev/{name}", f"{root}/dev/{name}", None, MS_BIND)
    os.mkdir(f"{root}{SANDBOX_TMP}")
    _mount(libc, "tmpfs", f"{root}{SANDBOX_TMP}", "tmpfs", MS_NOSUID | MS_NODEV,
           f"size={config['file_bytes']},mode=0700")
    _pivot_root(libc, root)
    _mount(libc, None, "/", None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)
    workdir = os.path.join(SANDBOX_TMP, "work")
    os.mkdir(workdir, 0o700)
    uid = config["run_as_uid"]
    if uid is not None:
        os.chown(SANDBOX_TMP, uid, uid)
        os.chown(workdir, uid, uid)
    config["workdir"] = workdir


def _expose(libc: Any, root: str, path: str) -> None:
    """``path`` of the host at the same place under ``root``: a read-only bind of a folder,
    the same link for a symlink, nothing where the host has nothing."""
    if os.path.islink(path):
        target = f"{root}{path}"
        if not os.path.lexists(target):
            os.makedirs(os.path.dirname(target), exist_ok=True)
            os.symlink(os.readlink(path), target)
        return
    if not os.path.isdir(path) or os.path.ismount(f"{root}{path}"):
        return
    target = f"{root}{path}"
    os.makedirs(target, exist_ok=True)
    _mount(libc, path, target, None, MS_BIND | MS_REC)
    _mount(libc, None, target, None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)


def _pivot_root(libc: Any, root: str) -> None:
    """Make ``root`` this namespace's /, and detach the host's old root from it."""
    number = SYS_PIVOT_ROOT.get(os.uname().machine)
    if number is None:
        raise OSError(f"pivot_root: no syscall number known for {os.uname().machine}")
    os.chdir(root)
    if libc.syscall(number, b".", b".") != 0:  # the old root is stacked under the new one
        errno = ctypes.get_errno()
        raise OSError(errno, f"pivot_root: {os.strerror(errno)}")
    if libc.umount2(b".", MNT_DETACH) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"detaching the host's root: {os.strerror(errno)}")
    os.chdir("/")


def _enter_user_namespace(libc: Any) -> bool:
    """Without CAP_SYS_ADMIN (a container running as a plain uid): a user namespace in which
    this process is root, mapped to its own uid outside, so that it may still make the
    network, mount and PID namespaces. False where the kernel allows no such namespace."""
    uid, gid = os.getuid(), os.getgid()
    if libc.unshare(CLONE_NEWUSER | CLONE_NEWNET | CLONE_NEWNS | CLONE_NEWPID) != 0:
        return False
    for name, text in (("setgroups", "deny"), ("uid_map", f"0 {uid} 1"),
                       ("gid_map", f"0 {gid} 1")):
        with open(f"/proc/self/{name}", "w") as handle:
            handle.write(text)
    return True


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


LINUX_CAPABILITY_VERSION_3 = 0x20080522


def _drop_capabilities(libc: Any) -> None:
    """Every capability gone (effective, permitted, inheritable), so that the process, root
    inside its user namespace, can no longer mount, unmount or change ids."""
    header = _CapHeader(LINUX_CAPABILITY_VERSION_3, 0)
    if libc.capset(ctypes.byref(header), (_CapData * 2)()) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"dropping capabilities: {os.strerror(errno)}")


def _mount(libc: Any, source: str | None, target: str, kind: str | None, flags: int,
           options: str | None = None) -> None:
    def encoded(value: str | None) -> bytes | None:
        return None if value is None else value.encode()

    if libc.mount(encoded(source), encoded(target), encoded(kind), flags, encoded(options)):
        errno = ctypes.get_errno()
        raise OSError(errno, f"mount {kind or ''} on {target}: {os.strerror(errno)}")


def _fork_and_wait(*, as_init: bool) -> None:
    """Fork; return in the child. The parent waits for it (as a namespace's init, reaping
    every orphan meanwhile) and exits as it did: an init cannot die by a signal it sends
    itself, so it exits 128 + the signal, and the outer runner turns that back into the
    signal."""
    child = os.fork()
    if child == 0:
        return
    while True:
        try:
            waited, status = os.waitpid(-1 if as_init else child, 0)
        except ChildProcessError:
            os._exit(1)
        if waited == child:
            break
    code = os.waitstatus_to_exitcode(status)
    if as_init:
        os._exit(128 - code if code < 0 else code)
    if code > 128 and code - 128 in SIGNALS_PASSED_UP:
        code = -(code - 128)
    if code < 0:
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    os._exit(code if code >= 0 else 1)


SIGNALS_PASSED_UP = frozenset({signal.SIGXCPU, signal.SIGKILL, signal.SIGSEGV, signal.SIGABRT,
                               signal.SIGBUS, signal.SIGXFSZ, signal.SIGTERM})
"""Deaths the parent tells apart (`sandbox._describe_exit`)."""


PRELOADED = (
    "bisect", "collections", "copy", "csv", "dataclasses", "datetime", "decimal", "difflib",
    "encodings.idna", "enum", "fractions", "functools", "hashlib", "heapq", "http.client",
    "itertools", "json", "math", "operator", "random", "re", "socket", "statistics", "string",
    "textwrap", "threading", "time", "typing", "unicodedata", "urllib.parse", "urllib.request",
)
"""Standard modules a grader may import when the interpreter's own folder is closed to the
sandbox user (a Python installed under /root, say): imported before root is dropped. Where
the standard library is world-readable, as in alignd's images, every module can be imported."""


def _readable_by_others(folder: str) -> bool:
    """Whether every folder from / down to ``folder`` lets other users in and read it."""
    path = os.path.abspath(folder)
    while True:
        try:
            mode = os.stat(path).st_mode
        except OSError:
            return False
        if mode & 0o005 != 0o005:
            return False
        parent = os.path.dirname(path)
        if parent == path:
            return True
        path = parent


def _preload_stdlib() -> None:
    for name in PRELOADED:
        try:
            importlib.import_module(name)
        except ImportError:  # a slimmed-down interpreter: that module is simply not offered
            pass


def _block_sockets() -> str:
    """Fallback when a network namespace is not allowed: an audit hook, which cannot be
    removed from Python, refuses every socket operation. Weaker than a namespace: code that
    reaches libc directly (ctypes) is not stopped."""

    def hook(event: str, args: tuple[Any, ...]) -> None:
        if event.startswith("socket."):
            raise PermissionError(f"network access is disabled in graders ({event})")

    sys.addaudithook(hook)
    return "audit-hook"


def _load(source: str, config: dict[str, Any]) -> Callable[..., Any]:
    _limit_cpu(config["cpu_seconds"])
    namespace: dict[str, Any] = {"__name__": "__grader__", "__builtins__": __builtins__}
    # Running the user's code is this process's purpose; it is isolated by now.
    exec(compile(source, "<grader>", "exec", dont_inherit=True), namespace)  # noqa: S102
    grade = namespace.get("grade")
    if not callable(grade):
        raise TypeError("source defines no grade(sample, item) function")
    return grade


def _limit_cpu(seconds: int) -> None:
    """Give the next step `seconds` more CPU (at least; the kernel counts whole seconds).
    Past it the kernel sends SIGXCPU, which kills the process and tells the parent why."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    used = math.ceil(usage.ru_utime + usage.ru_stime)
    _, hard = resource.getrlimit(resource.RLIMIT_CPU)
    resource.setrlimit(resource.RLIMIT_CPU, (used + seconds, hard))


def _grade_one(
    grade: Callable[..., Any], request: dict[str, Any], config: dict[str, Any], number: int
) -> dict[str, Any]:
    """Run grade() in a fresh working directory and describe what came of it."""
    workdir = os.path.join(config["workdir"], f"item-{number}")
    os.mkdir(workdir)
    os.chdir(workdir)
    try:
        _limit_cpu(config["cpu_seconds"])
        value = grade(request["sample"], request["item"])
    except BaseException as exc:  # noqa: BLE001 - user code may raise anything, even SystemExit
        return {"error": f"grade() raised {_describe(exc, config)}"}
    finally:
        os.chdir(config["workdir"])
        shutil.rmtree(workdir, ignore_errors=True)
    return _as_score(value)


def _as_score(value: object) -> dict[str, Any]:
    """The item's answer for what grade() returned. The value is the user's: its repr and its
    float may raise (an int past 4,300 digits, a float() overflow, a Real subclass of their
    own), and are taken under the same guard as grade() itself."""
    try:
        shown = repr(value)[:100]
    except BaseException:  # noqa: BLE001 - user code may raise anything
        shown = f"a value of type {type(value).__name__} that cannot be shown"[:100]
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return {"error": f"grade() returned {shown}, expected a number"}
    try:
        score = float(value)
    except BaseException as exc:  # noqa: BLE001
        return {"error": f"grade() returned {shown}, which is no float "
                         f"({type(exc).__name__})"}
    if not isinstance(score, float) or not math.isfinite(score):
        return {"error": f"grade() returned {shown}, expected a finite number"}
    return {"score": score}


def _describe(exc: BaseException, config: dict[str, Any]) -> str:
    if isinstance(exc, MemoryError):
        return f"MemoryError: exceeded memory limit ({config['memory_bytes'] // 2**20} MiB)"
    where = traceback.extract_tb(exc.__traceback__)
    line = next((f" (line {f.lineno})" for f in reversed(where) if f.filename == "<grader>"), "")
    return f"{type(exc).__name__}: {exc}"[:MAX_MESSAGE] + line


if __name__ == "__main__":
    main()
