"""`alignd demo` — the README's first command — runs to the end on the embedded stack, on the
suite's demo world (the full one `make demo` builds, built once per session by the `demo_world`
fixture): a short pretraining leaves a model that has not learnt the arithmetic yet, on which
fine-tuning's gain is a problem or two, noise (60 steps: base 1.0%, gold SFT 1.5%)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from services.embedded import stop_embedded_postgres
from services.web import free_port

pytestmark = pytest.mark.slow


def test_demo_fine_tunes_and_reports_accuracy(tmp_path: Path, demo_world: Any) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ALIGND_")}
    env.update({"ALIGND_DATA_DIR": str(tmp_path / "data"), "ALIGND_TORCH_THREADS": "1",
                "COLUMNS": "200", "TERM": "dumb"})
    for name in ("API", "REWARD", "INFERENCE"):
        env[f"ALIGND_{name}_URL"] = f"http://127.0.0.1:{free_port()}"
    command = [sys.executable, "-m", "cli.main", "demo", "--no-keep-running",
               "--demo-dir", str(demo_world.root), "--steps", "150",
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
    # Fine-tuning helps (here 10.5% → 53.0%; the demo's own 300 steps reach 55.0%).
    assert float(tuned.group(1)) >= float(base.group(1)) + 20, output[-3000:]
    assert "created GRPO job" in output
    assert re.search(r":grpo:ftjob-\S+\s+│?\s*\d+\.\d%", output), output[-3000:]
    assert "your demo API key: sk-alignd-" in output
    assert "answers from the inference service" in output
    assert re.search(r"ft:alignd-demo-tiny:rm:ftjob-\S*\s+│?\s*\d+\.\d%", output), output[-3000:]
