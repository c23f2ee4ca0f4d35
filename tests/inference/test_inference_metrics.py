"""The inference service's /metrics (tokens, time to first token, running and waiting
sequences, requests by route) and request ids, on each engine."""

from __future__ import annotations

import httpx

from tests.api.test_api_observability import metric_value
from tests.inference.conftest import InferenceWorld

PROMPT = "12+34="


def _metrics(url: str) -> str:
    return httpx.get(f"{url}/metrics", timeout=10).text


def test_a_completion_moves_tokens_and_time_to_first_token(
    inference_url: str, inference_world: InferenceWorld,
) -> None:
    before = _metrics(inference_url)
    headers = {"Authorization": f"Bearer {inference_world.key}", "X-Request-ID": "inf-42"}
    body = {"model": inference_world.base, "prompt": PROMPT, "max_tokens": 4, "n": 2,
            "ignore_eos": True, "seed": 0}
    response = httpx.post(f"{inference_url}/v1/completions", json=body, headers=headers,
                          timeout=120)
    assert response.status_code == 200, response.text
    assert response.headers["X-Request-ID"] == "inf-42"
    with httpx.stream("POST", f"{inference_url}/v1/chat/completions", headers=headers,
                      json={"model": inference_world.base, "max_tokens": 3, "stream": True,
                            "ignore_eos": True,
                            "messages": [{"role": "user", "content": PROMPT}]},
                      timeout=120) as stream:
        assert stream.headers["X-Request-ID"] == "inf-42"
        assert sum(1 for line in stream.iter_lines() if line.startswith("data:")) >= 2
    after = _metrics(inference_url)

    def moved(series: str) -> float:
        return (metric_value(after, series) or 0.0) - (metric_value(before, series) or 0.0)

    assert moved("alignd_inference_generated_tokens_total") == 2 * 4 + 3
    assert moved("alignd_inference_time_to_first_token_seconds_count") == 3  # one a sequence
    assert moved("alignd_inference_time_to_first_token_seconds_sum") > 0
    assert metric_value(after, "alignd_inference_running_sequences") == 0
    assert metric_value(after, "alignd_inference_waiting_sequences") == 0
    assert moved('alignd_http_requests_total{method="POST",route="/v1/completions",'
                 'status="200"}') == 1
    assert moved('alignd_http_requests_total{method="POST",route="/v1/chat/completions",'
                 'status="200"}') == 1
