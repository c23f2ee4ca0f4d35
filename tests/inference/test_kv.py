"""Batched KV caches against plain full forward passes: continuous batching and VAS's branches
must give each row the outputs it would get alone, from scratch."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForTokenClassification, PreTrainedModel

from inference.engines.kv import KVBatch, branch, extend, prefill
from inference.engines.models import _value_forward

PROMPTS = [[1, 5, 9, 7, 3, 11], [1, 4], [1, 8, 8, 2, 6, 6, 6, 6, 12]]
"""Rows of different lengths, so the batch pads them differently."""


@pytest.fixture(scope="module")
def value_model(tiny_model_dir: Path) -> PreTrainedModel:
    torch.manual_seed(0)
    model = AutoModelForTokenClassification.from_pretrained(tiny_model_dir, num_labels=1)
    return model.eval()


def alone(model: PreTrainedModel, ids: list[int]) -> float:
    """V of the last token of ``ids``, by one forward pass over the whole row."""
    with torch.inference_mode():
        return float(model(input_ids=torch.tensor([ids])).logits[0, -1, 0])


def test_branch_scores_each_candidate_as_its_own_extension(value_model: PreTrainedModel) -> None:
    forward = _value_forward(value_model)
    candidates = [torch.tensor([3, 14, 15]), torch.tensor([9]), torch.tensor([2, 6, 5, 35])]
    with torch.inference_mode():
        prefixes, _ = prefill(forward, PROMPTS, 0, torch.device("cpu"))
        _, values = branch(forward, prefixes, candidates)  # (Σ k,)
    expected = [alone(value_model, prompt + [token])
                for prompt, ids in zip(PROMPTS, candidates) for token in ids.tolist()]
    torch.testing.assert_close(values, torch.tensor(expected), rtol=1e-4, atol=1e-5)


def test_branches_advance_some_rows_by_their_chosen_candidates(
        value_model: PreTrainedModel) -> None:
    """Two decode steps through the branches: the rows kept (reordered, one dropped, the
    longest among them) continue exactly as a full recompute of their text."""
    forward = _value_forward(value_model)
    candidates = [torch.tensor([3, 14, 15]), torch.tensor([9, 4]), torch.tensor([2, 6])]
    with torch.inference_mode():
        prefixes, _ = prefill(forward, PROMPTS, 0, torch.device("cpu"))
        branches, _ = branch(forward, prefixes, candidates)
        advanced = branches.advance([1, 0], [1, 2])  # row 1 took 4, row 0 took 15; row 2 left
        grown, values = extend(forward, advanced, torch.tensor([7, 8]))  # (2,)
    expected = [alone(value_model, PROMPTS[1] + [4, 7]), alone(value_model, PROMPTS[0] + [15, 8])]
    torch.testing.assert_close(values, torch.tensor(expected), rtol=1e-4, atol=1e-5)
    assert grown.mask.tolist() == [[0, 0, 0, 0, 1, 1, 1, 1], [1] * 8]  # row 2's columns gone


@pytest.mark.parametrize("chosen", [None, 0])
def test_one_row_taken_out_of_the_branches_continues_alone(
        value_model: PreTrainedModel, chosen: int | None) -> None:
    forward = _value_forward(value_model)
    candidates = [torch.tensor([3, 14]), torch.tensor([9, 4]), torch.tensor([2, 6])]
    with torch.inference_mode():
        prefixes, _ = prefill(forward, PROMPTS, 0, torch.device("cpu"))
        branches, _ = branch(forward, prefixes, candidates)
        row = branches.row(1, chosen)  # one row, its left padding dropped
        rejoined = KVBatch.stack([row, prefixes.select([0])])
        _, values = extend(forward, rejoined, torch.tensor([5, 5]))
    text = PROMPTS[1] + ([] if chosen is None else [9])
    assert row.mask.shape == (1, len(text))
    expected = [alone(value_model, text + [5]), alone(value_model, PROMPTS[0] + [5])]
    torch.testing.assert_close(values, torch.tensor(expected), rtol=1e-4, atol=1e-5)


def test_branching_leaves_the_prefix_cache_as_it_was(value_model: PreTrainedModel) -> None:
    forward = _value_forward(value_model)
    with torch.inference_mode():
        prefixes, _ = prefill(forward, PROMPTS[:1], 0, torch.device("cpu"))
        before = [keys.clone() for keys, _ in
                  ((layer.keys, layer.values) for layer in prefixes.cache.layers)]
        branch(forward, prefixes, [torch.tensor([3, 4, 5])])
    after = [layer.keys for layer in prefixes.cache.layers]
    assert all(torch.equal(a, b) for a, b in zip(after, before, strict=True))
