"""Whatever a model writes is scored: a byte-level model can emit any byte, so a response may
hold NUL and other control characters, U+FFFD (bytes that were not UTF-8, or a character cut
off by the token limit), or nothing at all. `/v1/score` over real HTTP scores such text with
every grader and with reward models (a byte-level one among them): never a 4xx/5xx for the
request, never an item error caused by the characters. An online RL job whose policy sampled a
NUL died on this service's 400 ``nul_character``. A JSON ``\\ud800`` escape (a lone surrogate,
which no model writes but a client can send) is read as U+FFFD, as a UTF-8 decoder reads bytes
that are not UTF-8; an id that holds a NUL is a 400, never a failed database query (a 500)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from reward_service.graders import METRICS
from services.db.engine import session_factory, session_scope
from services.registry import register_model
from tests.reward_service.test_scoring import score

MODEL_TEXTS = [
    "\x00",
    "19\x00",
    "\x00" * 40,
    "\x01\x07\x08\x0b\x0c\x1b[31m\x7f\x80\x85\u2028",  # C0 and C1 controls, an ANSI escape
    "\ufffd",
    "1\ufffd9\ufffd",
    "",
]


def model_items() -> list[dict[str, Any]]:
    """Each model text as a plain response, and as the last turn of a chat whose earlier
    assistant turn (the model's own, fed back) holds a NUL too."""
    plain = [{"prompt": "12+7=", "response": text, "item": {"answer": "19", "expected": text}}
             for text in MODEL_TEXTS]
    chats = [{"messages": [{"role": "user", "content": "12+7="},
                           {"role": "assistant", "content": "\x00\ufffd"},
                           {"role": "user", "content": "again"},
                           {"role": "assistant", "content": text}],
              "item": {"answer": "19", "expected": text}} for text in MODEL_TEXTS]
    return plain + chats


def scored(response: httpx.Response) -> list[dict[str, Any]]:
    """Each item's result, checked to be a finite score with no error."""
    assert response.status_code == 200, response.text
    data = response.json()["data"]
    assert len(data) == len(model_items())
    for row in data:
        assert row["error"] is None, row
        assert row["score"] is not None and math.isfinite(row["score"]), row
    return data  # type: ignore[no-any-return]


def test_string_check_sees_the_text_unchanged(reward_url: str) -> None:
    spec = {"type": "string_check", "name": "same", "operation": "eq",
            "input": "{{sample.output_text}}", "reference": "{{item.expected}}"}
    assert [row["score"] for row in scored(score(reward_url, model_items(), spec))] == \
        [1.0] * len(model_items())
    contains = {**spec, "operation": "like", "reference": "{{item.answer}}"}
    got = [row["score"] for row in scored(score(reward_url, model_items(), contains))]
    assert got == [float("19" in text) for text in MODEL_TEXTS] * 2


@pytest.mark.parametrize("metric", sorted(METRICS))
def test_text_similarity_scores_it(reward_url: str, metric: str) -> None:
    spec = {"type": "text_similarity", "name": "sim", "evaluation_metric": metric,
            "input": "{{sample.output_text}}", "reference": "{{item.answer}}"}
    for row in scored(score(reward_url, model_items(), spec)):
        assert 0.0 <= row["score"] <= 1.0


def test_python_grader_receives_the_text_unchanged(reward_url: str) -> None:
    """The sandbox's pipe carries each item as a JSON line: NUL and U+FFFD arrive intact."""
    source = ("def grade(sample, item):\n"
              "    text = sample['output_text']\n"
              "    assert text == item['expected'], (text, item['expected'])\n"
              "    return float(text.count('\\x00'))\n")
    spec = {"type": "python", "name": "nuls", "source": source}
    got = [row["score"] for row in scored(score(reward_url, model_items(), spec))]
    assert got == [float(text.count("\x00")) for text in MODEL_TEXTS] * 2


def test_multi_combines_graders_over_it(reward_url: str) -> None:
    spec = {"type": "multi", "name": "mix", "calculate_output": "0.5 * same + 0.5 * fuzzy",
            "graders": {
                "same": {"type": "string_check", "name": "same", "operation": "eq",
                         "input": "{{sample.output_text}}", "reference": "{{item.expected}}"},
                "fuzzy": {"type": "text_similarity", "name": "fuzzy",
                          "evaluation_metric": "fuzzy_match",
                          "input": "{{sample.output_text}}", "reference": "{{item.answer}}"}}}
    for row in scored(score(reward_url, model_items(), spec)):
        assert set(row["parts"]) == {"same", "fuzzy"}


@pytest.mark.parametrize("which", ["single", "multi", "implicit_ref"])
def test_demo_reward_models_score_it(reward_url: str, reward_world: Any, which: str) -> None:
    spec = {"type": "reward_model", "model": getattr(reward_world, which)}
    scored(score(reward_url, model_items(), spec))


def test_ensembles_and_score_model_graders_score_it(reward_url: str, reward_world: Any) -> None:
    scored(score(reward_url, model_items(), {"type": "ensemble", "models": reward_world.members,
                                             "aggregation": "uwo", "uwo_lambda": 0.5}))
    scored(score(reward_url, model_items(), {"type": "score_model", "name": "judge",
                                             "model": reward_world.single}))


@pytest.fixture(scope="module")
def byte_level_reward_model(family_models: dict[str, Path], reward_world: Any,
                            database_url: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """Qwen2's byte-level checkpoint with a seeded scalar head, registered (NUL is one of its
    256 byte tokens: 'Ā')."""
    out = tmp_path_factory.mktemp("byte-level-reward-model")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(5)
        model = AutoModelForSequenceClassification.from_pretrained(family_models["qwen2"],
                                                                   num_labels=1)
        torch.nn.init.normal_(model.score.weight, std=0.5)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(family_models["qwen2"]).save_pretrained(out)
    model_id = f"rm-qwen2-{out.name}"
    with session_scope(session_factory(database_url)) as session:
        register_model(session, model_id=model_id, project_id=reward_world.project,
                       kind="reward_model", path=str(out), base_model="qwen2",
                       job_id="job-bytes")
    return model_id


def test_a_byte_level_reward_model_scores_it_by_its_bytes(reward_url: str,
                                                          byte_level_reward_model: str) -> None:
    spec = {"type": "reward_model", "model": byte_level_reward_model}
    data = scored(score(reward_url, model_items(), spec))
    plain = data[:len(MODEL_TEXTS)]
    by_text = {text: row["score"] for text, row in zip(MODEL_TEXTS, plain, strict=True)}
    assert by_text["\x00"] != by_text[""]  # the NUL was read as a token, not dropped


def test_a_lone_surrogate_is_read_as_u_fffd(reward_url: str, reward_world: Any) -> None:
    raw = json.dumps({"items": [{"prompt": "1+1=", "response": "PLACE"},
                                {"prompt": "1+1=", "response": "\ufffd"}],
                      "reward": {"type": "reward_model", "model": reward_world.single}})
    raw = raw.replace("PLACE", "\\ud800")  # json.dumps would not write a lone surrogate
    response = httpx.post(f"{reward_url}/v1/score", content=raw, timeout=60,
                          headers={"Content-Type": "application/json"})
    assert response.status_code == 200, response.text
    first, second = response.json()["data"]
    assert first["score"] == pytest.approx(second["score"], abs=1e-5)
    raising = {"type": "python", "name": "echo",
               "source": "def grade(sample, item):\n    raise ValueError('\\ud800')\n"}
    response = score(reward_url, [{"prompt": "p", "response": "r"}], raising)
    assert response.status_code == 200, response.text  # the message is well-formed text
    assert "ValueError: \ufffd" in response.json()["data"][0]["error"]


@pytest.mark.parametrize("reward", [
    {"type": "reward_model", "model": "rm-\x00"},
    {"type": "ensemble", "models": ["a", "b\x00"]},
    {"type": "score_model", "name": "judge", "model": "rm-\x00"},
])
def test_an_id_with_a_nul_is_a_400_naming_it(reward_url: str, reward: dict[str, Any]) -> None:
    response = score(reward_url, [{"prompt": "p", "response": "r"}], reward)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"].startswith("reward.model") and "NUL" in error["message"]
