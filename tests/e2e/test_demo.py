"""`alignd demo` — the README's first command — runs to the end on the embedded stack
(with a short pretraining so the suite stays quick; `make demo` runs the full one)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from services.embedded import stop_embedded_postgres
from services.web import free_port

pytestmark = pytest.mark.slow


def test_demo_fine_tunes_and_reports_accuracy(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ALIGND_")}
    env.update({"ALIGND_DATA_DIR": str(tmp_path / "data"), "ALIGND_TORCH_THREADS": "1",
                "COLUMNS": "200", "TERM": "dumb"})
    for name in ("API", "REWARD", "INFERENCE"):
        env[f"ALIGND_{name}_URL"] = f"http://127.0.0.1:{free_port()}"
    command = [sys.executable, "-m", "cli.main", "demo", "--no-keep-running",
               "--demo-dir", str(tmp_path / "world"), "--pretrain-steps", "60", "--steps", "150",
               "--grpo-steps", "3"]
    try:
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600,
                              check=False)
    finally:
        stop_embedded_postgres(tmp_path / "data" / "postgres")
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    base = re.search(r"alignd-demo-tiny\s+│?\s*(\d+\.\d)%", output)
    tuned = re.search(r"ft:alignd-demo-tiny:demo:ftjob-\S+\s+│?\s*(\d+\.\d)%", output)
    assert base and tuned, output[-3000:]
    assert float(tuned.group(1)) > float(base.group(1)), output[-3000:]  # fine-tuning helps
    assert "created GRPO job" in output
    assert re.search(r":grpo:ftjob-\S+\s+│?\s*\d+\.\d%", output), output[-3000:]
    assert "your demo API key: sk-alignd-" in output
    assert "answers from the inference service" in output
    assert re.search(r"ft:alignd-demo-tiny:rm:ftjob-\S*\s+│?\s*\d+\.\d%", output), output[-3000:]
    assert (tmp_path / "world" / "manifest.json").exists()
