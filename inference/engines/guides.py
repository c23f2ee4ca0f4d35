"""A value model's KV caches for one value-guided request (VAS), as both engines keep them.

Each guide holds the prefix s (prompt ⊕ tokens so far). A decode step branches the prefixes of
every row a value model guides into their top-k candidates in one batched pass
(`score_candidates`), V(s⊕a); once a token is sampled, `choose` marks that candidate, whose
cache extends the prefix. The rows a value model guided at one step and guides again at the
next are advanced together (one gather per layer), not copied out and restacked one by one.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from inference.catalog import ServedModel
from inference.engines.kv import Branches, Forward, KVBatch, branch


@dataclass
class Guide:
    served: ServedModel
    forward: Forward
    prefix: KVBatch | None = None
    """s as a batch of one row, while it is not held in `scored` (set when first filled)."""
    scored: Branches | None = None
    """The branches of this value model's last pass, holding s in row `row`."""
    row: int = 0
    chosen: int | None = None
    """The candidate sampled after that pass: s ends with it. None: s is the pass's prefix."""
    values: Tensor | None = None
    """(k,) float32 V(s⊕a) for this step's candidates, on the value model's device."""

    @property
    def ready(self) -> bool:
        """Its prefix is filled."""
        return self.prefix is not None or self.scored is not None

    def choose(self, candidate: int) -> None:
        """The ``candidate``-th candidate of this step was sampled: it extends the prefix."""
        assert self.scored is not None and self.chosen is None, "choose() without a pass"
        self.chosen, self.values = candidate, None

    def forget_step(self) -> None:
        """Drop the last pass (the prefix was set anew)."""
        self.scored, self.chosen, self.values = None, None, None

    def own_prefix(self) -> KVBatch:
        """s as a batch of one row, taken out of the last pass's branches if it is there."""
        if self.scored is not None:
            self.prefix = self.scored.row(self.row, self.chosen)
            self.scored, self.chosen = None, None
        assert self.prefix is not None, "a guide without its prefix"
        return self.prefix


def score_candidates(pairs: list[tuple[Guide, Tensor]]) -> None:
    """Fill each guide's `values` for its row's (k,) candidate ids.

    One batched forward per value model (guides grouped by served id) over every row it guides,
    each row's candidates branching from that row's prefix.
    """
    by_model: dict[str, list[tuple[Guide, Tensor]]] = {}
    for guide, candidate_ids in pairs:
        by_model.setdefault(guide.served.id, []).append((guide, candidate_ids))
    for group in by_model.values():
        group, prefixes = _prefixes(group)
        branches, values = branch(group[0][0].forward, prefixes, [ids for _, ids in group])
        values, offset = values.float(), 0  # (Σ k,)
        for row, (guide, ids) in enumerate(group):
            guide.prefix, guide.scored, guide.row, guide.chosen = None, branches, row, None
            guide.values = values[offset:offset + len(ids)]
            offset += len(ids)


def _prefixes(group: list[tuple[Guide, Tensor]]
              ) -> tuple[list[tuple[Guide, Tensor]], KVBatch]:
    """The group reordered and its guides' prefixes as one batch in that order: first the rows
    of the largest earlier pass that chose a candidate, advanced together, then the others."""
    passes: dict[int, list[tuple[Guide, Tensor]]] = {}
    for guide, ids in group:
        if guide.scored is not None and guide.chosen is not None:
            passes.setdefault(id(guide.scored), []).append((guide, ids))
    carried = max(passes.values(), key=len, default=[])
    kept = {id(guide) for guide, _ in carried}
    others = [(guide, ids) for guide, ids in group if id(guide) not in kept]
    batches = [guide.own_prefix() for guide, _ in others]
    if carried:
        scored = carried[0][0].scored
        assert scored is not None
        batches.insert(0, scored.advance([guide.row for guide, _ in carried],
                                         [guide.chosen for guide, _ in carried]))  # type: ignore[misc]
    return carried + others, KVBatch.stack(batches)
