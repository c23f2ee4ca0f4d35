"""MicroBatcher on a recording forward function: every caller gets its own rows, passes are
sorted by length within the token budget, a failed pass fails only its callers; and a real
sequence classifier gives a row the same output in a padded batch as alone."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from reward_service.batching import MicroBatcher


class Recorder:
    def __init__(self, fail_on: int | None = None):
        self.passes: list[list[list[int]]] = []
        self.fail_on = fail_on

    def __call__(self, rows: list[list[int]]) -> list[list[float]]:
        self.passes.append(rows)
        if self.fail_on is not None and any(self.fail_on in row for row in rows):
            raise RuntimeError("boom")
        return [[float(sum(row)), float(len(row))] for row in rows]


def test_concurrent_callers_share_passes_and_get_their_own_rows() -> None:
    forward = Recorder()
    batcher = MicroBatcher(forward, max_wait_ms=50, max_batch_tokens=10_000)
    requests = [[[i] * (1 + (i * 7) % 13), [i, i]] for i in range(20)]

    async def run() -> list[list[list[float]]]:
        return await asyncio.gather(*(batcher.score(rows) for rows in requests))

    results = asyncio.run(run())
    for rows, outputs in zip(requests, results, strict=True):
        assert outputs == [[float(sum(row)), float(len(row))] for row in rows]
    assert len(forward.passes) == 1
    lengths = [len(row) for row in forward.passes[0]]
    assert lengths == sorted(lengths)


def test_passes_stay_within_the_token_budget() -> None:
    forward = Recorder()
    batcher = MicroBatcher(forward, max_wait_ms=50, max_batch_tokens=40)
    rows = [[1] * n for n in (3, 9, 5, 12, 7, 2, 50, 8, 4, 11)]

    async def run() -> list[list[float]]:
        return await batcher.score(rows)

    assert asyncio.run(run()) == [[float(len(r)), float(len(r))] for r in rows]
    for rows_of_pass in forward.passes:
        padded = len(rows_of_pass) * max(len(r) for r in rows_of_pass)
        assert padded <= 40 or len(rows_of_pass) == 1
    assert [50] in [[len(r) for r in p] for p in forward.passes]  # too long: alone
    assert sum(len(p) for p in forward.passes) == len(rows)


def test_a_failed_pass_fails_only_its_callers() -> None:
    forward = Recorder(fail_on=666)
    batcher = MicroBatcher(forward, max_wait_ms=0, max_batch_tokens=3)

    async def run() -> tuple[object, object, list[list[float]]]:
        bad, good = await asyncio.gather(batcher.score([[666, 1, 1]]), batcher.score([[1, 2, 3]]),
                                         return_exceptions=True)
        later = await batcher.score([[4]])
        return bad, good, later

    bad, good, later = asyncio.run(run())
    assert isinstance(bad, RuntimeError)
    assert good == [[6.0, 3.0]]
    assert later == [[4.0, 1.0]]


def test_a_caller_that_goes_away_does_not_break_the_others() -> None:
    forward = Recorder()
    batcher = MicroBatcher(forward, max_wait_ms=30, max_batch_tokens=1000)

    async def run() -> list[list[float]]:
        gone = asyncio.ensure_future(batcher.score([[9, 9]]))
        await asyncio.sleep(0)
        gone.cancel()
        return await batcher.score([[1, 2]])

    assert asyncio.run(run()) == [[3.0, 2.0]]
    assert [[1, 2]] in forward.passes


def test_real_classifier_scores_a_row_the_same_padded_or_alone(tiny_model_dir: Path,
                                                               tmp_path: Path) -> None:
    from reward_service.model_cache import load_reward_model
    from tests.reward_service.models import make_reward_model

    path = make_reward_model(tiny_model_dir, tmp_path / "rm", num_labels=2, seed=3)
    loaded = load_reward_model("rm", str(path), {}, 256, lambda forward: MicroBatcher(forward))
    rows = [[1, 5, 6, 7], [1, 9] * 20, [1], [1, 4, 4, 4, 4, 4, 2]]
    together = loaded.forward(rows)
    for row, output in zip(rows, together, strict=True):
        assert output == pytest.approx(loaded.forward([row])[0], abs=1e-5)
