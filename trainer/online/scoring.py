"""Rewards for sampled completions, from the reward service (`POST /v1/score`), and the
shaping online RL applies to them.

`score_items` is strict: a service that refuses the request or leaves an item unscored fails
the job with the URL and what came back, since training on made-up rewards would be worse than
not training. A service that is unreachable or answers 5xx (restarting, say) is retried with
exponential backoff for up to ``retry_seconds`` before the job fails.

`shape_rewards` turns a sequence reward into per-token rewards r_t (the reward on the last
token, minus β·KL_t on every token when the KL penalty is part of the reward, as in Ziegler et
al. 2019 and Ouyang et al. 2022); `RewardNormalizer` scales and clips rewards (PPO-max).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from modeling.sequences import prompt_messages
from services.background import BackgroundLoop
from services.errors import AlignError, ServiceUnavailable
from services.reward_client import RewardClient

MAX_ITEMS_PER_REQUEST = 512
"""Items posted at once (the service takes up to 4096; smaller requests keep each body and
each grader batch bounded)."""
BACKOFF_FIRST_S, BACKOFF_MAX_S = 0.5, 15.0


class RewardServiceError(RuntimeError):
    """The reward service could not be reached, refused the request, or left items unscored."""


class RewardServiceUnavailable(RewardServiceError):
    """Unreachable or a 5xx: worth another try."""


def reward_item(row: dict[str, Any], completion: str) -> dict[str, Any]:
    """The `/v1/score` item of a completion: the whole row is its `item`, so graders can read
    `{{item.answer}}` (or any other field of the row, its `tools` too)."""
    conversation = prompt_messages(row)
    if conversation is not None:
        messages = [{"role": m["role"], "content": m["content"]} for m in conversation]
        return {"messages": [*messages, {"role": "assistant", "content": completion}],
                "item": row}
    return {"prompt": row["prompt"], "response": completion, "item": row}


class RewardScorer:
    """The reward service as one job scores with it: one HTTP client (one connection pool) on
    an event loop of its own thread for the whole job, not a client, a TLS context and a loop
    per step. Pair with `close`."""

    def __init__(self, reward_url: str, reward: dict[str, Any], *, timeout: float = 300.0,
                 service_key: str | None = None, project: str | None = None,
                 retry_seconds: float = 0.0,
                 between_tries: Callable[[], None] = lambda: None) -> None:
        self.url = f"{reward_url.rstrip('/')}/v1/score"
        self.reward, self.project = reward, project
        self.retry_seconds, self.between_tries = retry_seconds, between_tries
        self._loop = BackgroundLoop("reward-client")
        self._client = RewardClient(reward_url, timeout=timeout, service_key=service_key)

    def score(self, items: list[dict[str, Any]]) -> list[float]:
        """One scalar per item, in order. An unavailable service is tried again until
        ``retry_seconds`` have passed, calling ``between_tries`` (which may raise to stop)
        before each new try. Raises RewardServiceError."""
        return self.submit(items).result()

    def submit(self, items: list[dict[str, Any]]) -> PendingScores:
        """Send ``items`` now and return at once: the caller does other work while the
        service scores them, then takes `PendingScores.result` (with `score`'s retries)."""
        return PendingScores(self, items, self._send(items), time.monotonic())

    def _send(self, items: list[dict[str, Any]]) -> Future[list[dict[str, Any]]]:
        """One try at scoring ``items``, running on the scorer's loop."""
        return self._loop.submit(self._results(items))

    def _scores(self, future: Future[list[dict[str, Any]]]) -> list[float]:
        """The scores of one request, once it has answered; its failure as a RewardServiceError."""
        try:
            results = future.result()
        except ServiceUnavailable as exc:  # unreachable, or a 5xx: its message names the URL
            raise RewardServiceUnavailable(exc.message) from exc
        except AlignError as exc:  # the service refused the request (a bad spec, a model)
            raise RewardServiceError(f"the reward service at {self.url} answered "
                                     f"{exc.status_code}: {exc.message}") from exc
        for result in results:
            if result["score"] is None:
                raise RewardServiceError(
                    f"the reward service at {self.url} could not score item "
                    f"{result['index']}: {result.get('error') or 'no score'}")
        return [float(result["score"]) for result in results]

    async def _results(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        results: list[dict[str, Any]] = []
        for start in range(0, len(items), MAX_ITEMS_PER_REQUEST):
            batch = items[start : start + MAX_ITEMS_PER_REQUEST]
            results += [{**row, "index": start + row["index"]}
                        for row in await self._client.score(batch, self.reward,
                                                            project=self.project)]
        return results

    def close(self) -> None:
        self._loop.run(self._client.aclose())
        self._loop.close()


class PendingScores:
    """Scores on their way (`RewardScorer.submit`)."""

    def __init__(self, scorer: RewardScorer, items: list[dict[str, Any]],
                 future: Future[list[dict[str, Any]]], sent: float) -> None:
        self._scorer, self._items, self._future, self._sent = scorer, items, future, sent
        self.latency = 0.0
        """Seconds from sending the items to holding their scores (retries included)."""

    def result(self) -> list[float]:
        """The scores, in the items' order, waiting for them if need be. An unavailable
        service is tried again, from the first send, until the scorer's ``retry_seconds`` have
        passed, calling its ``between_tries`` before each new try. Raises RewardServiceError."""
        scorer = self._scorer
        deadline = self._sent + scorer.retry_seconds
        delay = BACKOFF_FIRST_S
        while True:
            try:
                scores = scorer._scores(self._future)
                self.latency = time.monotonic() - self._sent
                return scores
            except RewardServiceUnavailable:
                if time.monotonic() + delay > deadline:
                    raise
            time.sleep(delay)
            scorer.between_tries()
            delay = min(delay * 2, BACKOFF_MAX_S)
            self._future = scorer._send(self._items)


def score_items(reward_url: str, items: list[dict[str, Any]], reward: dict[str, Any],
                timeout: float = 300.0, *, service_key: str | None = None,
                project: str | None = None, retry_seconds: float = 0.0) -> list[float]:
    """One scalar per item, in order, from a scorer that lives for this call
    (`RewardScorer`). Items are `/v1/score` items ({"prompt", "response", "item"} or
    {"messages", "item"}); `reward` is a reward spec, scored with ``project``'s reward models
    (the service key vouches for it). Raises RewardServiceError."""
    scorer = RewardScorer(reward_url, reward, timeout=timeout, service_key=service_key,
                          project=project, retry_seconds=retry_seconds)
    try:
        return scorer.score(items)
    finally:
        scorer.close()


def shape_rewards(rewards: Tensor, mask: Tensor, kl: Tensor | None, beta: float) -> Tensor:
    """(B, T) per-token rewards: ``rewards[b]`` on row b's last real token, minus β·KL_t on
    every real token when ``kl`` is given (the KL penalty in the reward).

    rewards: (B,); mask: (B, T) bool, right-padded; kl: (B, T) per-token KL estimate or None.
    """
    token_rewards = torch.zeros(mask.shape, dtype=torch.float32, device=mask.device)  # (B, T)
    if kl is not None:
        token_rewards -= beta * kl.float() * mask
    last = (mask.long().sum(-1) - 1).clamp(min=0)  # (B,) index of each row's last token
    token_rewards[torch.arange(mask.shape[0], device=mask.device), last] += rewards.float()
    return token_rewards


@dataclass
class RewardNormalizer:
    """Reward scaling and clipping (PPO-max, Zheng et al. 2023 §5.1): "batch" standardises a
    step's rewards by their own mean and std, "running" by the mean and std of every reward
    seen so far (Welford's update, kept in checkpoints); then |r| is clipped to `clip`."""

    mode: str = "none"
    """"none", "batch" or "running"."""
    clip: float | None = None
    count: float = 0.0
    mean: float = 0.0
    m2: float = 0.0

    def __call__(self, rewards: Tensor) -> Tensor:
        """(B,) normalised and clipped rewards."""
        return self.with_baseline(rewards, rewards[:0])[0]

    def with_baseline(self, rewards: Tensor, baseline: Tensor) -> tuple[Tensor, Tensor]:
        """``rewards`` (B,) normalised and clipped, and ``baseline`` (ReMax's greedy rewards,
        any shape) put through exactly the same transform: the rewards' statistics, the
        same clip. A baseline left in raw units would not cancel the rewards' offset."""
        shift, scale = 0.0, 1.0
        if self.mode == "batch" and rewards.numel() > 1:
            shift, scale = float(rewards.mean()), float(rewards.std()) + 1e-8
        elif self.mode == "running":
            self._update(rewards)
            std = math.sqrt(self.m2 / (self.count - 1)) if self.count > 1 else 1.0
            shift, scale = self.mean, std + 1e-8
        out = [(values - shift) / scale for values in (rewards, baseline)]
        if self.clip is not None:
            out = [values.clamp(-self.clip, self.clip) for values in out]
        return out[0], out[1]

    def clipped(self, value: float) -> float:
        """A reward that is never normalised (NGRPO's r_max) through the same clip."""
        return value if self.clip is None else max(-self.clip, min(self.clip, value))

    def _update(self, rewards: Tensor) -> None:
        """Chan et al.'s parallel form of Welford's update with a batch of rewards."""
        n = float(rewards.numel())
        batch_mean = float(rewards.mean())
        batch_m2 = float(((rewards - batch_mean) ** 2).sum())
        total = self.count + n
        delta = batch_mean - self.mean
        self.mean += delta * n / total
        self.m2 += batch_m2 + delta**2 * self.count * n / total
        self.count = total

    def state_dict(self) -> dict[str, float]:
        return {"count": self.count, "mean": self.mean, "m2": self.m2}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.count, self.mean, self.m2 = state["count"], state["mean"], state["m2"]
