"""A value model's KV caches for one value-guided request (VAS), as both engines keep them.

Each guide holds the prefix s (prompt ⊕ tokens so far) in a one-row cache. A decode step
branches the prefixes of every row a value model guides into their top-k candidates in one
batched pass (`score_candidates`), V(s⊕a); once a token is sampled, `choose` keeps that
candidate's cache as the new prefix.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from inference.catalog import ServedModel
from inference.engines.kv import Forward, KVBatch, branch


@dataclass
class Guide:
    served: ServedModel
    forward: Forward
    prefix: KVBatch | None = None
    """s (1 row); None until it is first filled."""
    expanded: KVBatch | None = None
    """s ⊕ a for each candidate a of this step, in rows ``offset`` .. ``offset + k - 1`` of a
    batch shared with the other rows this value model guides."""
    offset: int = 0
    values: Tensor | None = None
    """(k,) float32 V(s⊕a) for this step's candidates, on the value model's device."""

    def choose(self, candidate: int) -> None:
        """Keep the cache of this step's ``candidate``-th candidate as the prefix."""
        assert self.expanded is not None, "choose() before score_candidates()"
        self.prefix = self.expanded.select([self.offset + candidate])
        self.expanded, self.values = None, None

    def forget_step(self) -> None:
        self.expanded, self.values = None, None


def score_candidates(pairs: list[tuple[Guide, Tensor]]) -> None:
    """Fill each guide's `values` for its row's (k,) candidate ids.

    One batched forward per value model (guides grouped by served id) over every row it guides,
    each row's candidates branching from that row's prefix cache.
    """
    by_model: dict[str, list[tuple[Guide, Tensor]]] = {}
    for guide, candidate_ids in pairs:
        by_model.setdefault(guide.served.id, []).append((guide, candidate_ids))
    for group in by_model.values():
        prefixes = [guide.prefix for guide, _ in group]
        assert all(prefix is not None for prefix in prefixes), "a guide without its prefix"
        expanded, values = branch(group[0][0].forward, prefixes,  # type: ignore[arg-type]
                                  [ids for _, ids in group])  # values: (Σ k,)
        values, offset = values.float(), 0
        for guide, ids in group:
            guide.expanded, guide.offset = expanded, offset
            guide.values = values[offset:offset + len(ids)]
            offset += len(ids)
