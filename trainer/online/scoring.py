"""Scores completions for training methods through the reward service (`POST /v1/score`).

A synchronous front to `services.reward_client.RewardClient` (a job runs in one worker thread)
that is strict: a service that is down, refuses the request or leaves an item unscored fails
the job with the URL and what came back, since training on made-up rewards would be worse
than not training.
"""

from __future__ import annotations

import asyncio
from typing import Any

from services.errors import AlignError, ServiceUnavailable
from services.reward_client import RewardClient

MAX_ITEMS_PER_REQUEST = 512
"""Items posted at once (the service takes up to 4096; smaller requests keep each body and
each grader batch bounded)."""


class RewardServiceError(RuntimeError):
    """The reward service could not be reached, refused the request, or left items unscored."""


async def _results(reward_url: str, items: list[dict[str, Any]], reward: dict[str, Any],
                   timeout: float, service_key: str | None,
                   project: str | None) -> list[dict[str, Any]]:
    client = RewardClient(reward_url, timeout=timeout, service_key=service_key)
    try:
        results: list[dict[str, Any]] = []
        for start in range(0, len(items), MAX_ITEMS_PER_REQUEST):
            batch = items[start : start + MAX_ITEMS_PER_REQUEST]
            results += [{**row, "index": start + row["index"]}
                        for row in await client.score(batch, reward, project=project)]
        return results
    finally:
        await client.aclose()


def score_items(reward_url: str, items: list[dict[str, Any]], reward: dict[str, Any],
                timeout: float = 300.0, *, service_key: str | None = None,
                project: str | None = None) -> list[float]:
    """One scalar per item, in order. Items are `/v1/score` items ({"prompt", "response",
    "item"} or {"messages", "item"}); `reward` is a reward spec, scored with ``project``'s
    reward models (the service key vouches for it). Raises RewardServiceError."""
    url = f"{reward_url.rstrip('/')}/v1/score"
    try:
        results = asyncio.run(_results(reward_url, items, reward, timeout, service_key, project))
    except ServiceUnavailable as exc:  # unreachable, or a 5xx: its message names URL and status
        raise RewardServiceError(exc.message) from exc
    except AlignError as exc:  # the service refused the request (a bad spec, an unknown model)
        raise RewardServiceError(
            f"the reward service at {url} answered {exc.status_code}: {exc.message}") from exc
    for result in results:
        if result["score"] is None:
            raise RewardServiceError(f"the reward service at {url} could not score item "
                                     f"{result['index']}: {result.get('error') or 'no score'}")
    return [float(result["score"]) for result in results]
