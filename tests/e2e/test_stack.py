"""`alignd up` as an operator runs it: one real embedded stack for the module, driven from
other processes. A second `up` (or `demo`) on its data folder is refused and leaves it
serving; a port already in use is named before anything starts; a worker killed with SIGKILL
mid-job is restarted and the job resumes from its checkpoint; `status` shows the parts and
`stop` stops them and lets go of the folder. The tests run in file order: `stop` is last."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from cli.stack_lock import LOCK_NAME, port_span, running_stack
from services.client import AlignClient
from services.embedded import embedded_database_url, embedded_postgres_pid, stop_embedded_postgres
from services.web import free_port
from tests.conftest import wait_for
from tests.data import jsonl, supervised_rows
from tests.trainer.test_worker import FAST_LEASES
from tests.trainer.test_worker_crash import step_runs

pytestmark = pytest.mark.slow
ADMIN_KEY = "stack-admin"


def stack_env(data_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ALIGND_")}
    env.update({"ALIGND_DATA_DIR": str(data_dir), "ALIGND_ADMIN_KEY": ADMIN_KEY,
                "ALIGND_TORCH_THREADS": "1", "COLUMNS": "200", "TERM": "dumb", **FAST_LEASES})
    for name in ("API", "REWARD", "INFERENCE"):
        env[f"ALIGND_{name}_URL"] = f"http://127.0.0.1:{free_port()}"
    return {**env, **extra}


def alignd(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cli.main", *args], env=env, text=True,
                          capture_output=True, timeout=timeout, check=False)


@dataclass
class Running:
    env: dict[str, str]
    process: subprocess.Popen[bytes]
    output: Path

    @property
    def data_dir(self) -> Path:
        return Path(self.env["ALIGND_DATA_DIR"])

    @property
    def api_url(self) -> str:
        return self.env["ALIGND_API_URL"]

    def record(self) -> dict:
        record = running_stack(self.data_dir)
        assert record is not None, self.output.read_text()[-3000:]
        return record


@pytest.fixture(scope="module")
def stack(data_dir: Path, tiny_model_dir: Path) -> Iterator[Running]:
    env = stack_env(data_dir, ALIGND_BASE_MODELS=json.dumps({"tiny": str(tiny_model_dir)}))
    output = data_dir.parent / "up.out"
    with output.open("wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "cli.main", "up"], env=env,
                                   stdout=out, stderr=subprocess.STDOUT)
    running = Running(env, process, output)
    try:
        wait_for(lambda: process.poll() is not None
                 or (running_stack(running.data_dir) or {}).get("state") == "running",
                 300, interval=0.5, message="`alignd up` to start")
        assert process.poll() is None, output.read_text()[-3000:]
        yield running
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=90)
            except subprocess.TimeoutExpired:
                process.kill()
        stop_embedded_postgres(running.data_dir / "postgres")  # if the test left it running


def test_a_port_in_use_is_named_before_anything_starts(tmp_path: Path) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        env = stack_env(tmp_path / "data", ALIGND_REWARD_URL=f"http://127.0.0.1:{port}")
        done = alignd(env, "up")
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"port {port} (reward, ALIGND_REWARD_URL=http://127.0.0.1:{port}) is already in use" \
        in done.stderr
    assert not (tmp_path / "data" / "postgres").exists()
    assert not (tmp_path / "data" / LOCK_NAME).exists()


def test_a_second_up_or_demo_is_refused_and_the_first_keeps_serving(stack: Running,
                                                                     tmp_path: Path) -> None:
    postgres = embedded_postgres_pid(stack.data_dir / "postgres")
    urls = {name: stack.env[f"ALIGND_{name.upper()}_URL"] for name in ("api", "reward", "inference")}
    expected = (f"alignd is already running on {port_span(urls)} (pid {stack.process.pid}); "
                "use it, or `alignd stop`")
    second = alignd(stack.env, "up")
    assert second.returncode == 1 and expected in second.stderr, second.stdout + second.stderr
    demo = alignd(stack.env, "demo", "--no-keep-running", "--demo-dir", str(tmp_path / "world"))
    assert demo.returncode == 1 and expected in demo.stderr, demo.stdout + demo.stderr
    assert not (tmp_path / "world").exists()

    assert embedded_postgres_pid(stack.data_dir / "postgres") == postgres is not None
    assert httpx.get(f"{stack.api_url}/readyz").status_code == 200
    with AlignClient(stack.api_url, ADMIN_KEY) as admin:
        project = admin.create_project("second-up")
        key = admin.create_api_key(project["id"])["key"]
    files = httpx.get(f"{stack.api_url}/v1/files", headers={"Authorization": f"Bearer {key}"})
    assert files.status_code == 200, files.text


def test_a_killed_worker_is_restarted_and_its_job_resumes(stack: Running) -> None:
    with AlignClient(stack.api_url, ADMIN_KEY) as admin:
        project = admin.create_project("killed-worker")
        key = admin.create_api_key(project["id"])["key"]
    path = stack.data_dir / "train.jsonl"
    path.write_bytes(jsonl(supervised_rows(64, seed=1)))
    with AlignClient(stack.api_url, key) as client:
        training = client.upload_file(path, "supervised")
        job = client.create_job(model="tiny", training_file=training["id"], suffix="kill", method={
            "type": "supervised", "supervised": {"hyperparameters": {
                "max_steps": 200, "n_epochs": 100, "batch_size": 8, "checkpoint_every": 10}}})
        wait_for(lambda: client.checkpoints(job["id"]), 300, interval=0.1,
                 message="a first checkpoint")
        worker = stack.record()["parts"]["worker"]
        os.kill(worker["pid"], signal.SIGKILL)

        restarted = wait_for(lambda: (w := stack.record()["parts"]["worker"])["restarts"] == 1
                             and w["state"] == "running" and w, 60, message="a new worker")
        assert restarted["pid"] != worker["pid"]
        done = wait_for(lambda: (j := client.get_job(job["id"]))["status"] in
                        ("succeeded", "failed") and j, 600, interval=0.5,
                        message="the job to finish")
        assert done["status"] == "succeeded", done
        assert done["attempts"] == 2
        messages = [event["message"] for event in client.events_since(job["id"], None)]
    resumed = [m for m in messages if m.startswith("resumed from checkpoint at step")]
    assert len(resumed) == 1, messages
    resumed_at = int(resumed[0].rsplit(" ", 1)[-1])
    # per attempt each step once, the second exactly those after its checkpoint (`job_steps`)
    runs = step_runs(embedded_database_url(stack.data_dir / "postgres"), job["id"])
    first_steps, second_steps = ([step for step, _, _ in runs[a]] for a in (1, 2))
    assert sorted(runs) == [1, 2] and first_steps == list(range(1, first_steps[-1] + 1))
    assert second_steps == list(range(resumed_at + 1, 201)), (resumed_at, second_steps[:3])
    said = "worker exited with status -9; restarting in 1 s (restart 1)"
    assert said in stack.output.read_text()
    assert said in (stack.data_dir / "logs" / "stack.log").read_text()


def test_status_shows_the_parts_and_stop_stops_them(stack: Running) -> None:
    shown = alignd(stack.env, "status")
    assert shown.returncode == 0, shown.stdout + shown.stderr
    parts = ("postgres", "api", "reward", "inference", "worker")
    rows = {line.split()[0]: line.split() for line in shown.stdout.splitlines()
            if line.split() and line.split()[0] in parts}
    assert set(rows) == {"postgres", "api", "reward", "inference", "worker"}, shown.stdout
    assert all("ok" in row for row in rows.values()), shown.stdout
    worker = stack.record()["parts"]["worker"]
    assert rows["worker"][1] == str(worker["pid"]) and rows["worker"][-1] == "1", shown.stdout

    stopped = alignd(stack.env, "stop")
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert f"stopped alignd (pid {stack.process.pid})" in stopped.stdout
    assert stack.process.wait(timeout=30) == 0
    assert not (stack.data_dir / LOCK_NAME).exists()
    assert embedded_postgres_pid(stack.data_dir / "postgres") is None  # the stack started it
    assert alignd(stack.env, "status").returncode == 1
