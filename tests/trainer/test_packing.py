"""Packed rows (`modeling.packing`) on the demo's tiny Llama: each sequence's response
log-probabilities and TDPO's per-position KL equal those it gets right-padded on its own row,
in fewer positions; a model that would let packed sequences see each other is detected."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from transformers import AutoModelForCausalLM

from modeling.logprobs import response_logps
from modeling.packing import MIN_ROW_LENGTH, first_fit, pack, packing_matches
from modeling.sequences import pad_right, response_labels
from trainer.algorithms.preference import sequential_kl, token_kl

CPU = torch.device("cpu")


def texts(n: int, seed: int = 0) -> tuple[list[list[int]], list[int]]:
    """``n`` token sequences of 3 to 80 ids (longer than a row's minimum, too), and where each
    one's response starts (0 for one of them: a response with no prompt)."""
    rng = random.Random(seed)
    sequences = [[1] + [rng.randrange(3, 90) for _ in range(rng.choice([2, 5, 9, 17, 79]))]
                 for _ in range(n)]
    starts = [rng.randrange(1, len(s)) for s in sequences]
    starts[3] = 0
    return sequences, starts


@pytest.fixture(scope="module")
def model(base_model_path: Path) -> Any:
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(base_model_path).eval()


def padded(model: Any, sequences: list[list[int]], starts: list[int]) -> tuple[Any, Any, Any]:
    """Right padding, the way every other path batches: logits, labels, attention mask."""
    batch = pad_right(sequences, 0, CPU)
    with torch.no_grad():
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    return logits, response_labels(batch, [max(s, 1) for s in starts]), batch


def test_packed_sequences_get_the_log_probabilities_they_get_alone(model: Any) -> None:
    sequences, starts = texts(32)
    logits, labels, batch = padded(model, sequences, starts)
    packed = pack(sequences, starts, 0, CPU)
    with torch.no_grad():
        actual = packed.response_logps(packed.logits(model))
    assert torch.allclose(actual, response_logps(logits, labels), atol=1e-4)
    assert torch.equal(packed.response_token_counts(),
                       (labels[:, 1:] != -100).sum(-1).to(torch.float32))
    assert packed.input_ids.numel() < batch.input_ids.numel()  # the point: less padding
    assert packed.input_ids.shape[1] == max(MIN_ROW_LENGTH, max(map(len, sequences)))


def test_tdpo_s_per_position_kl_is_the_same_packed(model: Any, base_model_path: Path) -> None:
    sequences, starts = texts(16, seed=1)
    torch.manual_seed(1)
    other = AutoModelForCausalLM.from_pretrained(base_model_path).eval()
    with torch.no_grad():  # a second model that differs from the first
        for parameter in other.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    reference_logits, labels, batch = padded(model, sequences, starts)
    policy_logits = other(input_ids=batch.input_ids,
                          attention_mask=batch.attention_mask).logits.detach()
    expected = sequential_kl(reference_logits[:, :-1], policy_logits[:, :-1],
                             labels[:, 1:] != -100)
    packed = pack(sequences, starts, 0, CPU)
    with torch.no_grad():
        per_token = token_kl(packed.logits(model)[:, :-1], packed.logits(other)[:, :-1])
    actual = packed.per_sequence(per_token * packed.response_mask)
    assert torch.allclose(actual, expected, atol=1e-4)
    assert expected.min() > 0


def test_first_fit_places_every_sequence_once_within_the_row_length() -> None:
    rng = random.Random(2)
    lengths = [rng.randrange(1, 40) for _ in range(100)]
    rows = first_fit(lengths, 64)
    assert sorted(i for row in rows for i in row) == list(range(100))
    assert all(sum(lengths[i] for i in row) <= 64 for row in rows)
    assert len(rows) <= 2 * sum(lengths) / 64 + 1  # first-fit keeps rows over half full


class PaddedMaskOnly(nn.Module):
    """A causal LM that builds its mask from an attention mask of ones, as an architecture
    without transformers' packed-sequence detection would: packed sequences see each other."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, use_cache: bool = False) -> Any:
        return self.model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                          use_cache=use_cache)


def test_a_model_that_ignores_packing_is_detected(model: Any) -> None:
    sequences, starts = texts(16)
    assert packing_matches(model, sequences, starts, 0, CPU)
    assert not packing_matches(PaddedMaskOnly(model), sequences, starts, 0, CPU)
    unpacked = pack(sequences, starts, 0, CPU, packed=False)  # its fallback is right
    logits, labels, _ = padded(model, sequences, starts)
    with torch.no_grad():
        actual = unpacked.response_logps(unpacked.logits(PaddedMaskOnly(model)))
    assert torch.allclose(actual, response_logps(logits, labels), atol=1e-4)


def test_packed_response_logits_equal_the_padded_layout_s(model: Any) -> None:
    """The online loop's layout: left-padded prompts of 1-7 tokens, right-padded responses
    of 0-9 tokens (an empty one too), at temperature 0.7."""
    from modeling.logprobs import response_logits
    from modeling.packing import packed_response_logits
    from trainer.online.experience import pack as pack_rollouts

    rng = random.Random(3)
    prompts = [[1] + [rng.randrange(3, 90) for _ in range(rng.randrange(0, 7))]
               for _ in range(12)]
    responses = [[rng.randrange(3, 90) for _ in range(rng.randrange(0, 10))] for _ in range(12)]
    responses[0] = [2] * 9
    sequences, attention_mask, mask = pack_rollouts(prompts, responses, 0, CPU)
    length = mask.shape[1]
    with torch.no_grad():
        expected = response_logits(model, sequences, attention_mask, length, 0.7)
        actual = packed_response_logits(model, sequences, attention_mask, length, 0.7)
    assert actual.shape == expected.shape
    kept = mask.bool()  # padding columns differ by design: nothing reads them
    assert torch.allclose(actual[kept], expected[kept], atol=1e-4)
