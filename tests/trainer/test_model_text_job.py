"""Online RL on a policy that writes NUL, control characters, bytes that are not UTF-8 and
empty responses: a GRPO job through a real worker, the api, PostgreSQL and the reward
service succeeds, and what it stored reads back through the api. Such a job died once: the
reward service refused the scoring request that held a sampled NUL with a 400. A job that does
fail on such text (its grader raises, quoting it) is recorded as failed, with the text escaped
where PostgreSQL stores it (a NUL in jsonb or text made the failure's own write fail, and the
job stayed running)."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from transformers import AutoTokenizer

from services.db.engine import session_factory, session_scope
from services.registry import declare_base_models
from tests.api.test_files import upload
from tests.byte_models import make_byte_writer
from tests.data import jsonl
from tests.trainer.test_worker import events, series, wait_status

pytestmark = pytest.mark.slow

TINY = {"prompts_per_step": 2, "group_size": 4, "max_new_tokens": 6, "learning_rate": 1e-4,
        "max_steps": 2}
COUNTS = {"type": "python", "name": "bytes",
          "source": "def grade(sample, item):\n"
                    "    text = sample['output_text']\n"
                    "    return text.count('\\x00') + 0.5 * text.count('\\ufffd') - (text == '')\n"}
"""NULs count 1, characters that were not UTF-8 a half, and an empty response -1."""
QUOTES = {"type": "python", "name": "quotes",
          "source": "def grade(sample, item):\n"
                    "    if '\\x00' in sample['output_text']:\n"
                    "        raise ValueError(sample['output_text'])\n"
                    "    return 0.0\n"}


@pytest.fixture(scope="module")
def byte_writer(family_models: dict[str, Path], database_url: str,
                tmp_path_factory: pytest.TempPathFactory) -> str:
    """Qwen2's checkpoint writing NUL, ESC, 0xFF (never UTF-8), 0xE2 (a lead byte) or its
    end of turn, equally likely; registered as a base model."""
    source = family_models["qwen2"]
    eos = AutoTokenizer.from_pretrained(source).eos_token
    out = make_byte_writer(source, tmp_path_factory.mktemp("byte-writer"), b"\x00\x1b\xff\xe2",
                           tokens=[eos])
    model_id = f"qwen2-bytes-{uuid.uuid4().hex[:8]}"
    with session_scope(session_factory(database_url)) as session:
        declare_base_models(session, {model_id: str(out)})
    return model_id


def create(client: httpx.Client, model: str, reward: dict[str, Any]) -> str:
    rows = [{"prompt": f"{i}+{i % 7}="} for i in range(4)]
    training = upload(client, jsonl(rows), "prompts").json()["id"]
    response = client.post("/v1/fine_tuning/jobs", json={
        "model": model, "training_file": training, "suffix": "bytes", "seed": 5,
        "method": {"type": "reinforcement", "reinforcement": {
            "algorithm": "grpo", "reward": reward, "hyperparameters": TINY}}})
    assert response.status_code == 200, response.text
    return str(response.json()["id"])


def test_a_grpo_job_on_a_policy_writing_nul_succeeds(
        client: httpx.Client, worker_factory: Any, reward_service: str, byte_writer: str) -> None:
    worker = worker_factory(ALIGND_REWARD_URL=reward_service)
    job_id = create(client, byte_writer, COUNTS)
    job = wait_status(client, job_id, {"succeeded", "failed"}, 300, worker)
    assert job["status"] == "succeeded", job
    steps, rewards = series(client, job_id, "reward_mean")
    assert steps == [1, 2] and all(reward > 0 for reward in rewards)  # NULs were sampled
    assert events(client, job_id)[-1]["message"].startswith("job succeeded")


def test_a_job_whose_grader_quotes_a_nul_fails_with_it_escaped(
        client: httpx.Client, worker_factory: Any, reward_service: str, byte_writer: str) -> None:
    worker = worker_factory(ALIGND_REWARD_URL=reward_service)
    job_id = create(client, byte_writer, QUOTES)
    job = wait_status(client, job_id, {"succeeded", "failed"}, 300, worker)
    assert job["status"] == "failed", job
    assert "grade() raised ValueError" in job["error"]["message"]
    assert "\\x00" in job["error"]["message"] and "\x00" not in job["error"]["message"]
    failure = events(client, job_id)[-1]
    assert failure["level"] == "error" and "\\x00" in failure["message"]
