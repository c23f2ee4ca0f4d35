"""The row stream training reads: epoch after epoch, each in its own order.

Each epoch's order is drawn from a generator seeded with (seed, epoch), so a position in the
stream (rows consumed) is all a resumed run needs to see the same rows in the same order.
"""

from __future__ import annotations

from functools import lru_cache

import torch


@lru_cache(maxsize=4)
def epoch_order(n_rows: int, seed: int, epoch: int) -> tuple[int, ...]:
    """The shuffled row order of one epoch; the same for the same (seed, epoch), resumed or not."""
    generator = torch.Generator().manual_seed(seed * 1000 + epoch)  # distinct while epochs < 1000
    return tuple(torch.randperm(n_rows, generator=generator).tolist())


def stream_rows(n_rows: int, seed: int, start: int, count: int) -> list[int]:
    """Row indices at positions [start, start + count) of the stream (crossing epoch boundaries)."""
    return [
        epoch_order(n_rows, seed, position // n_rows)[position % n_rows]
        for position in range(start, start + count)
    ]
