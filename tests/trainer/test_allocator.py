"""A worker's allocator settings take on this machine's C library (glibc)."""

from __future__ import annotations

import subprocess
import sys


def test_glibc_takes_the_thresholds() -> None:
    """In a process of its own, as a worker sets them at start-up: mallopt accepts each."""
    code = "from trainer.allocator import keep_freed_memory; print(keep_freed_memory())"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    assert result.stdout.strip() == "True", result.stderr
