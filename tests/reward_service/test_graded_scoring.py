"""Graders through the reward service's HTTP API: every grader type as a `/v1/score` spec,
with values worked by hand, per-item errors that leave the rest of the batch scored, and a
`score_model` grader judged by a registered reward model."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.reward_service.test_scoring import own_forward, score

ANSWERS = [("12+7=", "19", "19"), ("5-3=", "2", "3"), ("40+2=", "42", "42 apples")]


def items() -> list[dict[str, Any]]:
    return [{"prompt": p, "response": r, "item": {"answer": a}} for p, a, r in ANSWERS]


def scores(response: httpx.Response) -> list[float | None]:
    assert response.status_code == 200, response.text
    return [row["score"] for row in response.json()["data"]]


def test_string_check_against_the_item_answer(reward_url: str) -> None:
    spec = {"type": "string_check", "name": "exact", "input": "{{sample.output_text}}",
            "reference": "{{item.answer}}", "operation": "eq"}
    assert scores(score(reward_url, items(), spec)) == [1.0, 0.0, 0.0]
    assert scores(score(reward_url, items(), {**spec, "operation": "like"})) == [1.0, 0.0, 1.0]


def test_text_similarity_fuzzy_match(reward_url: str) -> None:
    spec = {"type": "text_similarity", "name": "fuzzy", "input": "{{sample.output_text}}",
            "reference": "{{item.answer}}", "evaluation_metric": "fuzzy_match"}
    body = [{"prompt": "p", "response": "kitten", "item": {"answer": "sitting"}}]
    assert scores(score(reward_url, body, spec)) == [pytest.approx(8 / 13)]


def test_python_grader_with_one_hanging_item(reward_url: str) -> None:
    source = ("def grade(sample, item):\n"
              "    if item['answer'] == '2':\n"
              "        while True:\n"
              "            pass\n"
              "    return float(sample['output_text'].strip() == item['answer'])\n")
    spec = {"type": "python", "name": "py", "source": source}
    response = score(reward_url, items(), spec)
    data = response.json()["data"]
    assert [row["score"] for row in data] == [1.0, None, 0.0]
    assert "time" in data[1]["error"] or "CPU" in data[1]["error"]
    assert httpx.get(f"{reward_url}/healthz").status_code == 200


def test_multi_formula_over_named_graders(reward_url: str) -> None:
    spec = {"type": "multi", "name": "mix", "calculate_output": "0.75 * exact + 0.25 * contains",
            "graders": {
                "exact": {"type": "string_check", "name": "exact", "operation": "eq",
                          "input": "{{sample.output_text}}", "reference": "{{item.answer}}"},
                "contains": {"type": "string_check", "name": "contains", "operation": "like",
                             "input": "{{sample.output_text}}", "reference": "{{item.answer}}"}}}
    data = score(reward_url, items(), spec).json()["data"]
    assert [row["score"] for row in data] == [1.0, 0.0, 0.25]
    assert data[2]["parts"] == {"exact": 0.0, "contains": 1.0}


def test_score_model_grader_uses_a_registered_reward_model(reward_url: str,
                                                           reward_world: Any) -> None:
    spec = {"type": "score_model", "name": "judge", "model": reward_world.single}
    got = scores(score(reward_url, items(), spec))
    path = reward_world.paths[reward_world.single]
    expected = [own_forward(path, {"prompt": p, "response": r})[0] for p, _, r in ANSWERS]
    assert got == pytest.approx(expected, abs=1e-5)


def test_grader_spec_errors_are_400_with_their_path(reward_url: str) -> None:
    bad = {"type": "string_check", "name": "x", "input": "{{sample.output_text}}",
           "reference": "{{item.answer}}", "operation": "regex"}
    response = score(reward_url, items(), bad)
    assert response.status_code == 400 and response.json()["error"]["param"] == "reward.operation"
    missing = {"type": "string_check", "name": "x", "input": "{{sample.output_text}}",
               "reference": "{{item.missing}}", "operation": "eq"}
    data = score(reward_url, items(), missing).json()["data"]
    assert all(row["score"] is None and "missing" in row["error"] for row in data)
