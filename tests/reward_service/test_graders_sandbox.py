"""The `python` grader's sandbox: user code runs in a child process under limits, and no
item's misbehaviour reaches the caller or the other items."""

from __future__ import annotations

import errno
import functools
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path

import pytest

from reward_service.graders import GradeOutcome, SandboxLimits, grade_batch, parse_grader_spec
from reward_service.graders.sandbox import FRESH_UIDS, NOBODY, RUNNER

FAST = SandboxLimits(cpu_seconds=1, wall_seconds=1.0)


def python_grader(body: str) -> dict[str, object]:
    source = "import os, socket, time, urllib.request\n\ndef grade(sample, item):\n"
    return {"type": "python", "name": "p", "source": source + textwrap.indent(body, "    ")}


def grade(body: str, items: list[dict], limits: SandboxLimits = FAST) -> list[GradeOutcome]:
    spec = parse_grader_spec(python_grader(textwrap.dedent(body).strip()))
    return grade_batch(spec, [str(item.get("output", "")) for item in items], items, limits=limits)


def test_a_correct_grader_scores_every_item() -> None:
    body = "return float(sample['output_text'].strip() == item['answer'])"
    items = [{"output": "4", "answer": "4"}, {"output": "7", "answer": "8"}]
    assert grade(body, items) == [GradeOutcome(score=1.0), GradeOutcome(score=0.0)]


def test_an_endless_loop_times_out_and_the_next_item_still_scores() -> None:
    body = """
        if item['kind'] == 'loop':
            while True:
                pass
        return 1.0
    """
    looping, after = grade(body, [{"kind": "loop"}, {"kind": "fine"}])
    assert looping.error in ("timed out after 1.0 s", "exceeded CPU time limit (1 s)")
    assert after == GradeOutcome(score=1.0)


def test_sleeping_past_the_wall_clock_limit_times_out() -> None:
    [slept] = grade("time.sleep(30)", [{}], SandboxLimits(wall_seconds=0.5))
    assert slept.error == "timed out after 0.5 s"


def test_top_level_code_that_never_finishes_loading_times_out() -> None:
    """Loading (the interpreter's start and the source's top-level code) has its own
    deadline, `load_seconds`, apart from each item's `wall_seconds`."""
    source = "import time\ntime.sleep(30)\n\ndef grade(sample, item):\n    return 1.0\n"
    spec = parse_grader_spec({"type": "python", "name": "p", "source": source})
    outcomes = grade_batch(spec, ["", ""], [{}, {}],
                           limits=SandboxLimits(wall_seconds=1.0, load_seconds=0.5))
    assert [o.error for o in outcomes] == ["loading the source failed: timed out after 0.5 s"] * 2


def test_a_request_s_items_share_one_time_budget() -> None:
    """Each item sleeps 0.4 s, within its own 1 s; the request's 1 s runs out after a few,
    and every item after that is answered with the reason instead of being run."""
    limits = SandboxLimits(cpu_seconds=1, wall_seconds=1.0, request_seconds=1.0)
    outcomes = grade("time.sleep(0.4)\nreturn 1.0", [{}] * 12, limits)
    scored = [o for o in outcomes if o.score == 1.0]
    assert 1 <= len(scored) <= 4 and outcomes[:len(scored)] == scored, outcomes
    assert {o.error for o in outcomes[len(scored):]} == {
        "the request's grading time (1 s) ran out before this item"}


def test_cpu_time_is_limited_even_when_the_wall_clock_allows_more() -> None:
    [spun] = grade("while True:\n    pass", [{}], SandboxLimits(cpu_seconds=1, wall_seconds=10))
    assert spun.error == "exceeded CPU time limit (1 s)"


def test_allocating_past_the_memory_limit_fails_that_item() -> None:
    body = "data = bytearray(2 * 1024**3)\nreturn float(len(data))"
    [allocated] = grade(body, [{}])
    assert allocated.error == "grade() raised MemoryError: exceeded memory limit (512 MiB)"


@pytest.fixture
def listener() -> Iterator[int]:
    """A real TCP server on loopback that the grader must not be able to reach."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        yield server.getsockname()[1]


@pytest.mark.parametrize("connect", [
    "socket.create_connection(('127.0.0.1', {port}), timeout=0.5)",
    "urllib.request.urlopen('http://127.0.0.1:{port}/', timeout=0.5)",
])
def test_the_network_is_unreachable(listener: int, connect: str) -> None:
    [outcome] = grade(connect.format(port=listener) + "\nreturn 1.0", [{}])
    assert outcome.score is None
    assert outcome.error is not None
    assert any(word in outcome.error for word in ("unreachable", "refused", "disabled"))


def test_errors_and_non_numbers_are_reported_per_item() -> None:
    body = """
        kind = item['kind']
        if kind == 'raise':
            return 1 / 0
        if kind == 'text':
            return 'abc'
        if kind == 'nan':
            return float('nan')
        if kind == 'exit':
            raise SystemExit(0)
        if kind == 'die':
            os._exit(3)
        return True if kind == 'bool' else 0.5
    """
    kinds = ["raise", "text", "nan", "bool", "exit", "die", "fine"]
    outcomes = grade(body, [{"kind": kind} for kind in kinds])
    assert [o.error for o in outcomes] == [
        "grade() raised ZeroDivisionError: division by zero (line 6)",
        "grade() returned 'abc', expected a number",
        "grade() returned nan, expected a finite number",
        "grade() returned True, expected a number",
        "grade() raised SystemExit: 0 (line 12)",
        "grader process exited with code 3",
        None,
    ]
    assert outcomes[-1].score == 0.5


def test_numbers_that_break_repr_or_float_are_an_item_error_not_a_crash() -> None:
    """An int past float's range (and past the 4,300 digits repr allows), and a Real whose
    __float__ raises, each fail their own item; the runner lives on to score the next."""
    body = """
        import fractions
        class Odd(fractions.Fraction):
            def __float__(self):
                raise RuntimeError('no')
        kind = item['kind']
        if kind == 'huge':
            return 10 ** 400
        if kind == 'vast':
            return 10 ** 5000
        if kind == 'odd':
            return Odd(1, 3)
        return 0.25
    """
    outcomes = grade(body, [{"kind": kind} for kind in ("huge", "vast", "odd", "fine")])
    assert [o.error for o in outcomes] == [
        "grade() returned " + repr(10 ** 400)[:100] + ", which is no float (OverflowError)",
        ("grade() returned a value of type int that cannot be shown, which is no float "
         "(OverflowError)"),
        "grade() returned Odd(1, 3), which is no float (RuntimeError)",
        None,
    ]
    assert outcomes[-1].score == 0.25


def test_a_grader_writing_to_its_reply_channel_cannot_score_later_items() -> None:
    """User code runs in the process that answers the service: it can find the reply pipe
    among its file descriptors and write score lines for the items after it. Those lines
    carry no item's nonce: its own item fails saying why, and every later item is scored by
    a fresh runner as grade() scores it (0.25), never 99."""
    body = """
        if item['kind'] == 'forge':
            import json
            for fd in map(int, os.listdir('/proc/self/fd')):
                try:
                    os.write(fd, (json.dumps({'score': 99.0}) + '\\n').encode() * 3)
                except OSError:
                    pass
        return 0.25
    """
    outcomes = grade(body, [{"kind": "forge"}, {"kind": "x"}, {"kind": "y"}, {"kind": "z"}])
    assert outcomes[0].score is None and "reply channel" in (outcomes[0].error or "")
    assert outcomes[1:] == [GradeOutcome(score=0.25)] * 3


@pytest.fixture
def private_tmp(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A temp root the sandbox's `nobody` can enter (pytest's tmp_path is root-only)."""
    root = Path(tempfile.mkdtemp(prefix="graders-test-"))
    root.chmod(0o755)
    monkeypatch.setattr(tempfile, "tempdir", str(root))
    yield root
    os.rmdir(root)


def test_files_land_in_a_fresh_directory_that_is_removed(private_tmp: Path) -> None:
    body = """
        seen = len(os.listdir('.'))
        with open('scratch.txt', 'w') as f:
            f.write('x' * 10)
        return float(seen == 0 and os.path.getsize('scratch.txt') == 10)
    """
    assert grade(body, [{}, {}]) == [GradeOutcome(score=1.0)] * 2
    assert list(private_tmp.iterdir()) == []  # and nothing left on the host's disk


def test_the_environment_holds_no_service_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALIGND_DATABASE_URL", "postgresql://secret")
    body = "return float(sum(name.startswith('ALIGND') for name in os.environ))"
    assert grade(body, [{}]) == [GradeOutcome(score=0.0)]


@pytest.mark.skipif(os.getuid() != 0, reason="privileges are dropped only when run as root")
def test_each_run_gets_a_uid_of_its_own() -> None:
    [first] = grade("return float(os.getuid())", [{}])
    [second] = grade("return float(os.getuid())", [{}])
    assert first.score is not None and second.score is not None
    assert FRESH_UIDS[0] <= first.score < FRESH_UIDS[1] and first.score != second.score
    assert grade("return float(os.getuid())", [{}], SandboxLimits(run_as_uid=NOBODY)) == [
        GradeOutcome(score=float(NOBODY))]


def test_a_source_that_fails_to_load_fails_every_item() -> None:
    spec = parse_grader_spec({"type": "python", "name": "p",
                              "source": "import nonexistent_module\ndef grade(s, i):\n  return 1"})
    outcomes = grade_batch(spec, ["a", "b"], [{}, {}], limits=FAST)
    expected = ("loading the source failed: ModuleNotFoundError: No module named "
                "'nonexistent_module' (line 1)")
    assert [o.error for o in outcomes] == [expected] * 2


def test_a_broken_sandbox_never_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "executable", "/nonexistent/python")
    outcomes = grade("return 1.0", [{}, {}])
    assert all(o.error and o.error.startswith("grader sandbox failed") for o in outcomes)


def test_multi_with_a_python_sub_grader() -> None:
    spec = parse_grader_spec({
        "type": "multi", "name": "m", "calculate_output": "0.5 * exact + 0.5 * length",
        "graders": {
            "exact": {"type": "string_check", "name": "e", "input": "{{sample.output_text}}",
                      "reference": "{{item.answer}}", "operation": "eq"},
            "length": python_grader("return min(len(sample['output_text']) / 4, 1.0)"),
        },
    })
    [outcome] = grade_batch(spec, ["42"], [{"answer": "42"}], limits=FAST)
    assert outcome == GradeOutcome(score=0.75, parts={"exact": 1.0, "length": 0.5})


def test_the_audit_hook_fallback_blocks_sockets() -> None:
    """Used where a network namespace is refused; checked here directly."""
    code = (f"import sys; sys.path.insert(0, {str(RUNNER.parent)!r}); import _runner\n"
            "_runner._block_sockets()\n"
            "import socket\n"
            "try:\n    socket.socket()\nexcept PermissionError as e:\n    print(e)\n")
    result = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True,
                            check=True)
    assert "network access is disabled in graders (socket.__new__)" in result.stdout


# --- attacks on the sandbox (root, as CI runs the suite: the namespaces need it) -------------

def needs_root(test: Callable[..., None]) -> Callable[..., None]:
    """An attack that needs root to set up (the namespaces): skipped for a developer without
    it, but a failure under CI (``CI`` set), which runs the suite as root: an attack test
    must never pass there by not running."""
    if os.getuid() == 0:
        return test
    if os.environ.get("CI"):
        @functools.wraps(test)
        def refused(*args: object, **kwargs: object) -> None:
            pytest.fail(f"{test.__name__} needs root, and CI is set: run the suite as root")
        return refused
    return pytest.mark.skip(reason="namespaces need root")(test)
SLOW = SandboxLimits(cpu_seconds=30, wall_seconds=60.0)


def processes_of(uid: int) -> list[int]:
    """Host pids whose real uid is ``uid``."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            status = (entry / "status").read_text()
        except OSError:
            continue
        if entry.name.isdigit() and f"\nUid:\t{uid}\t" in status:
            pids.append(int(entry.name))
    return pids


@needs_root
def test_a_forked_setsid_grandchild_does_not_outlive_the_run() -> None:
    """Fork, setsid, fork again, sleep: the grandchild left the process group the parent
    kills, and ran on as nobody for 40 s after the response before namespaces."""
    body = """
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                time.sleep(60)
            os._exit(0)
        time.sleep(0.2)
        return float(os.getuid())
    """
    [outcome] = grade(body, [{}], SLOW)
    assert outcome.score is not None
    from tests.conftest import wait_for

    wait_for(lambda: not processes_of(int(outcome.score or 0)), timeout=5,
             message="every process of the run to be gone")


@needs_root
def test_no_socket_file_is_reachable() -> None:
    """Walk the whole tree the sandbox sees: no socket but the one the run binds itself as a
    control, which the walk must find (PostgreSQL's in /run/postgresql connected, with trust
    auth, before)."""
    body = """
        import stat
        control = os.path.join(os.getcwd(), 'control.sock')
        socket.socket(socket.AF_UNIX).bind(control)
        found = []
        for root, dirs, files in os.walk('/'):
            if root in ('/proc', '/sys'):
                dirs[:] = []
                continue
            for name in files + dirs:
                try:
                    if stat.S_ISSOCK(os.lstat(os.path.join(root, name)).st_mode):
                        found.append(os.path.join(root, name))
                except OSError:
                    pass
        if found != [control]:
            raise ValueError(f'control {control}; found ' + ', '.join(found[:5]))
        return 1.0
    """
    assert grade(body, [{}], SLOW) == [GradeOutcome(score=1.0)]


def shown(outcome: GradeOutcome) -> str:
    """What a grader raised to tell the test something: ``raise ValueError(text)``."""
    assert outcome.error is not None and "ValueError: " in outcome.error, outcome
    return outcome.error.split("ValueError: ", 1)[1].rsplit(" (line", 1)[0]


@needs_root
def test_the_root_holds_only_the_interpreter() -> None:
    """Allowed, not hidden: / lists only the interpreter's folder, its libraries, /proc, /dev
    and /tmp; a file the host keeps anywhere else (another project's artifacts under /var, the
    service's checkout, /etc) cannot be opened, and the interpreter's folder is read-only."""
    root = Path("/var/cache") / f"alignd-sandbox-test-{os.getpid()}"
    secret = root / "models" / "ftjob-a" / "config.json"
    secret.parent.mkdir(parents=True)
    try:
        for folder in (root, root / "models", secret.parent):
            folder.chmod(0o755)
        secret.write_text('{"secret": true}')
        secret.chmod(0o644)
        body = """
            import sys
            kind = item['kind']
            if kind == 'root':
                raise ValueError(','.join(sorted(os.listdir('/'))))
            if kind == 'write':
                open(os.path.join(sys.base_prefix, 'planted'), 'w').write('x')
            return float(len(open(item['path']).read()))
        """
        items = [{"kind": "root"}, {"kind": "write"},
                 *({"kind": "open", "path": path} for path in (
                     str(secret), "/etc/passwd", str(Path(__file__).resolve())))]
        listing, write, *opened = grade(body, items, SLOW)
        first = str(Path(sys.base_prefix).resolve()).split("/")[1]
        names = set(shown(listing).split(","))
        allowed = {"usr", "lib", "lib64", "lib32", "proc", "dev", "tmp", first}
        assert names <= allowed and {"proc", "dev", "tmp", first} <= names, names
        assert write.error is not None and ("Read-only file system" in write.error
                                            or "PermissionError" in write.error), write
        for item, outcome in zip(items[2:], opened, strict=True):
            assert outcome.error is not None and "FileNotFoundError" in outcome.error, item
    finally:
        shutil.rmtree(root)


@needs_root
def test_the_run_sees_only_its_own_processes_and_forks_a_bounded_number() -> None:
    body = """
        mine = [p for p in os.listdir('/proc') if p.isdigit()]
        children = 0
        try:
            for _ in range(200):
                if os.fork() == 0:
                    time.sleep(30)
                    os._exit(0)
                children += 1
        except OSError:
            pass
        return len(mine) * 1000 + children
    """
    [outcome] = grade(body, [{}], SLOW)
    assert outcome.score is not None
    seen, children = divmod(int(outcome.score), 1000)
    assert seen <= 3  # init, the grading process (and /proc's own reader)
    assert children < SandboxLimits().max_processes


SYSCALL_ATTACKS = {
    # a namespace of its own, where it would be root again
    "unshare_user": "libc.unshare(0x10000000)",
    "unshare_mount": "libc.unshare(0x00020000)",
    "clone_user": "libc.syscall(56, 0x10000000 | 17, 0, 0, 0, 0)",  # clone(NEWUSER|SIGCHLD)
    "mount": "libc.mount(b'none', b'/tmp', b'tmpfs', 0, None)",
    "ptrace": "libc.ptrace(0, 0, None, None)",  # PTRACE_TRACEME
    "bpf": "libc.syscall(321, 0, None, 0)",
    "keyctl": "libc.syscall(250, 0, 0, 0, 0, 0)",
    "perf_event_open": "libc.syscall(298, None, 0, -1, -1, 0)",
    "userfaultfd": "libc.syscall(323, 0)",
}
"""Each call a grader might make to get out, by ctypes (x86-64 syscall numbers)."""


@needs_root
@pytest.mark.skipif(os.uname().machine != "x86_64", reason="x86-64 syscall numbers")
def test_the_syscall_filter_refuses_namespaces_mounts_ptrace_bpf_and_keyrings() -> None:
    """Each attack fails with EPERM (the filter's answer, not the kernel's own), the filter
    shows in /proc (Seccomp: 2), and what graders need still works: threads, fork."""
    body = """
        import ctypes, threading
        libc = ctypes.CDLL(None, use_errno=True)
        kind = item['kind']
        if kind == 'status':
            status = open('/proc/self/status').read()
            return float(status.split('Seccomp:')[1].split()[0])
        if kind == 'ordinary':
            done = []
            thread = threading.Thread(target=lambda: done.append(1))
            thread.start(); thread.join()
            pid = os.fork()
            if pid == 0:
                os._exit(0)
            os.waitpid(pid, 0)
            return float(len(done))
        result = eval(item['call'])
        return float(ctypes.get_errno()) if result == -1 else 1000.0 + result
    """
    items = ([{"kind": "status"}, {"kind": "ordinary"}]
             + [{"kind": name, "call": call} for name, call in SYSCALL_ATTACKS.items()])
    outcomes = grade(body, items, SLOW)
    assert outcomes[0] == GradeOutcome(score=2.0), outcomes[0]  # SECCOMP_MODE_FILTER
    assert outcomes[1] == GradeOutcome(score=1.0), outcomes[1]
    refused = {item["kind"]: o.score for item, o in zip(items[2:], outcomes[2:], strict=True)}
    assert refused == {name: float(errno.EPERM) for name in SYSCALL_ATTACKS}, refused


def test_the_filter_is_compiled_by_libseccomp_with_every_refusal() -> None:
    from reward_service.graders.syscalls import NAMESPACE_FLAGS, REFUSED, grader_filter

    program = grader_filter()
    assert len(program) % 8 == 0 and len(program) // 8 > len(REFUSED)
    assert {"unshare", "setns", "mount", "ptrace", "bpf", "keyctl"} <= set(REFUSED)
    assert NAMESPACE_FLAGS["CLONE_NEWUSER"] == 0x10000000


UNPRIVILEGED_PYTHON = next((p for p in ("/usr/bin/python3", "/usr/local/bin/python3")
                            if os.access(p, os.X_OK)), None)


@needs_root  # to become an unprivileged uid for the test
@pytest.mark.skipif(shutil.which("setpriv") is None or UNPRIVILEGED_PYTHON is None,
                    reason="setpriv and a system python are needed")
def test_without_root_the_run_still_gets_namespaces_of_its_own(listener: int) -> None:
    """The images run the reward service as a plain uid, where it could not make namespaces
    and fell back to an audit hook. A user namespace gives it the same isolation, and the run
    (root in that namespace) has no capability left to unmount what covers the host."""
    source = textwrap.dedent(f"""
        import ctypes, os, socket

        def grade(sample, item):
            problems = []
            if os.path.exists('/run'):
                problems.append('/run is visible')
            if len([p for p in os.listdir('/proc') if p.isdigit()]) > 3:
                problems.append('host processes are visible')
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.umount2(b'/usr/lib', 2) == 0:
                problems.append('the read-only /usr/lib could be unmounted')
            try:
                socket.create_connection(('127.0.0.1', {listener}), timeout=0.5)
                problems.append('the network is reachable')
            except OSError:
                pass
            if problems:
                raise RuntimeError('; '.join(problems))
            return 1.0
    """)
    config = {"source": source, "workdir": "/tmp", **{k: v for k, v in asdict(FAST).items()},
              "run_as_uid": None}
    process = subprocess.Popen(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", UNPRIVILEGED_PYTHON,
         "-I", str(RUNNER)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, cwd="/")
    try:
        assert process.stdin is not None and process.stdout is not None
        process.stdin.write(json.dumps(config) + "\n")
        process.stdin.flush()
        ready = json.loads(process.stdout.readline() or "{}")
        assert ready.get("namespaces") == ["user", "net", "mount", "pid"], ready
        process.stdin.write(json.dumps({"sample": {"output_text": ""}, "item": {},
                                        "nonce": "n0"}) + "\n")
        process.stdin.flush()
        assert json.loads(process.stdout.readline()) == {"score": 1.0, "nonce": "n0"}
    finally:
        process.kill()
        process.wait(timeout=30)


ISOLATION_PROBE = """
import json, sys
from reward_service.graders.sandbox import SandboxLimits, run_python_grader
source = ("def grade(sample, item):\\n"
          "    status = open('/proc/self/status').read()\\n"
          "    return float(int(status.split('CapEff:')[1].split()[0], 16))")
outcomes = run_python_grader(source, ["x"], [{}], SandboxLimits(isolation=sys.argv[1]))
print(json.dumps([[o.score, o.error] for o in outcomes]))
"""
NO_NAMESPACES = ("for kind in mnt net pid user; do echo 0 > /proc/sys/user/max_${kind}_namespaces;"
                 " done; exec \"$0\" -c \"$1\" \"$2\"")
"""A shell, run as the root of a user namespace that maps only root, that lets no namespace be
made below it (as a container whose seccomp profile refuses unshare), then runs the probe."""


@needs_root  # to make the user namespace whose limits are set
@pytest.mark.skipif(shutil.which("unshare") is None, reason="util-linux's unshare is needed")
@pytest.mark.parametrize("isolation", ["required", "best_effort"])
def test_where_namespaces_are_refused_python_graders_are_too_unless_allowed(
        isolation: str) -> None:
    """Graders used to fall back silently to an audit hook, which ctypes gets past. Now they
    are refused with the reason and the setting, unless the operator accepts the fallback; in
    which case the run, root of that namespace with no other uid to become, still has no
    capability left (and the sandbox does not fail trying to hand its folder to a uid that
    does not exist there)."""
    result = subprocess.run(
        ["unshare", "--user", "--map-root-user", "sh", "-c", NO_NAMESPACES, sys.executable,
         ISOLATION_PROBE, isolation], check=False, capture_output=True, text=True,
        timeout=120,
        cwd=Path(__file__).parents[2])
    assert result.returncode == 0, result.stderr
    [[score, error]] = json.loads(result.stdout)
    if isolation == "required":
        assert score is None and "ALIGND_PYTHON_GRADER_ISOLATION=best_effort" in error, error
        assert "it got none" in error
    else:
        assert (score, error) == (0.0, None)  # no effective capability left
