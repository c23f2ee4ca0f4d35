"""The `python` grader's sandbox: user code runs in a child process under limits, and no
item's misbehaviour reaches the caller or the other items."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from reward_service.graders import GradeOutcome, SandboxLimits, grade_batch, parse_grader_spec
from reward_service.graders.sandbox import RUNNER

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


@pytest.fixture
def private_tmp(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A temp root the sandbox's `nobody` can enter (pytest's tmp_path is root-only)."""
    root = Path(tempfile.mkdtemp(prefix="graders-test-"))
    root.chmod(0o755)
    monkeypatch.setattr(tempfile, "tempdir", str(root))
    yield root
    os.rmdir(root)


def test_files_land_in_a_fresh_directory_that_is_removed(private_tmp: Path) -> None:
    body = f"""
        seen = len(os.listdir('.'))
        with open('scratch.txt', 'w') as f:
            f.write('x' * 10)
        inside = os.getcwd().startswith({str(private_tmp)!r})
        return float(seen == 0 and inside and os.path.getsize('scratch.txt') == 10)
    """
    assert grade(body, [{}, {}]) == [GradeOutcome(score=1.0)] * 2
    assert list(private_tmp.iterdir()) == []


def test_the_environment_holds_no_service_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALIGND_DATABASE_URL", "postgresql://secret")
    body = "return float(sum(name.startswith('ALIGND') for name in os.environ))"
    assert grade(body, [{}]) == [GradeOutcome(score=0.0)]


@pytest.mark.skipif(os.getuid() != 0, reason="privileges are dropped only when run as root")
def test_user_code_runs_as_nobody() -> None:
    assert grade("return float(os.getuid())", [{}]) == [GradeOutcome(score=65534.0)]


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
