"""Padding-free batches: variable-length sequences packed end to end into a few rows.

A batch of short sequences of mixed lengths, right-padded to its longest, spends much of its
compute on padding (a DPO batch of the demo's pairs: 544 positions for 380 tokens). Packed
first-fit into rows of `row_length`, the same sequences take few padded positions. Each
sequence's position ids restart at 0, and with no attention mask transformers' masking
(`masking_utils.find_packed_sequence_indices`) then lets each token attend only to the
earlier tokens of its own sequence, so every sequence's logits are those it has alone.

That rests on the model building its mask through transformers' masking utilities, which
not every architecture does: `supports_packing` checks a model once, and a trainer falls back
to one sequence per row (`pack(..., packed=False)`), which is plain right padding and right for
any causal LM.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from modeling.logprobs import IGNORE_INDEX

MIN_ROW_LENGTH = 64
"""Rows are at least this long (or the longest sequence): longer rows waste less at their ends
but attend over more positions, and on the demo's pairs 32-64 was fastest, 128 slower."""


@dataclass
class PackedBatch:
    """Sequences laid end to end in rows; per-token values summed back per sequence."""

    input_ids: Tensor  # (R, L) token ids, the pad id after each row's last sequence
    position_ids: Tensor  # (R, L) 0, 1, ... within each sequence; 0 on padding
    labels: Tensor  # (R, L) the token id on response tokens, IGNORE_INDEX elsewhere
    sequence_index: Tensor  # (R, L) the sequence each token belongs to; n_sequences on padding
    places: list[tuple[int, int]]
    """Each sequence's (row, offset)."""

    @property
    def n_sequences(self) -> int:
        return len(self.places)

    def logits(self, model: Any) -> Tensor:
        """(R, L, V) the model's logits, each sequence attending only to itself."""
        return model(input_ids=self.input_ids, position_ids=self.position_ids,
                     use_cache=False).logits

    def per_sequence(self, per_token: Tensor) -> Tensor:
        """(n,) the sums of ``per_token`` (R, L-1), the values at the positions that predict
        each next token (as `shift_for_next_token` aligns them), over each sequence."""
        owner = self.sequence_index[:, 1:].reshape(-1)  # (R*(L-1),) the predicted token's
        sums = torch.zeros(self.n_sequences + 1, dtype=per_token.dtype, device=per_token.device)
        return sums.index_add(0, owner, per_token.reshape(-1))[: self.n_sequences]

    @property
    def response_mask(self) -> Tensor:
        """(R, L-1) bool: the position predicts a response token."""
        return self.labels[:, 1:] != IGNORE_INDEX

    def response_logps(self, logits: Tensor) -> Tensor:
        """(n,) Σ_t log π(y_t | x, y_<t) over each sequence's response tokens, in float32."""
        labels = self.labels[:, 1:]  # (R, L-1)
        shifted = logits[:, :-1]  # (R, L-1, V)
        dtype = torch.promote_types(shifted.dtype, torch.float32)
        nll = F.cross_entropy(shifted.reshape(-1, shifted.shape[-1]).to(dtype),
                              labels.reshape(-1), ignore_index=IGNORE_INDEX,
                              reduction="none").view(labels.shape)  # (R, L-1), 0 if ignored
        return -self.per_sequence(nll)

    def response_token_counts(self) -> Tensor:
        """(n,) response tokens per sequence."""
        return self.per_sequence(self.response_mask.to(torch.float32))


def pack(sequences: list[list[int]], starts: list[int], pad_id: int, device: torch.device,
         *, packed: bool = True) -> PackedBatch:
    """``sequences`` (prompt + response ids; the response from ``starts[i]``) packed
    first-fit, longest first, into rows of max(longest, MIN_ROW_LENGTH) tokens; ``packed``
    False: one sequence per row (right padding)."""
    layout = Layout.of([len(s) for s in sequences], packed=packed)
    ids = [[pad_id] * layout.width for _ in layout.rows]
    positions = [[0] * layout.width for _ in layout.rows]
    labels = [[IGNORE_INDEX] * layout.width for _ in layout.rows]
    owners = [[len(sequences)] * layout.width for _ in layout.rows]
    for index, (row, offset) in enumerate(layout.places):
        sequence = sequences[index]
        start = max(starts[index], 1)  # nothing in the row predicts a sequence's first token
        end = offset + len(sequence)
        ids[row][offset:end] = sequence
        positions[row][offset:end] = range(len(sequence))
        labels[row][offset + start:end] = sequence[start:]
        owners[row][offset:end] = [index] * len(sequence)

    def tensor(values: list[list[int]]) -> Tensor:
        return torch.tensor(values, dtype=torch.long, device=device)

    return PackedBatch(tensor(ids), tensor(positions), tensor(labels), tensor(owners),
                       layout.places)


@dataclass
class Layout:
    """Where each sequence goes: rows of sequence indices, and each sequence's (row, offset)."""

    rows: list[list[int]]
    places: list[tuple[int, int]]
    width: int

    @classmethod
    def of(cls, lengths: list[int], *, packed: bool = True) -> Layout:
        rows = (first_fit(lengths, max(max(lengths), MIN_ROW_LENGTH)) if packed
                else [[i] for i in range(len(lengths))])
        places = [(0, 0)] * len(lengths)
        for r, members in enumerate(rows):
            offset = 0
            for index in members:
                places[index] = (r, offset)
                offset += lengths[index]
        return cls(rows, places, max(sum(lengths[i] for i in row) for row in rows))


def packed_response_logits(model: Any, sequences: Tensor, attention_mask: Tensor,
                           response_length: int, temperature: float = 1.0) -> Tensor:
    """`modeling.logprobs.response_logits` computed on packed rows: (B, T, V) logits of each
    response token for rows laid out as a left-padded prompt then a right-padded response
    of T = ``response_length`` columns. sequences, attention_mask: (B, S); the real tokens of
    a row are contiguous, and its prompt has at least one."""
    batch, width = sequences.shape
    real = attention_mask.bool()
    first = real.to(torch.int64).argmax(dim=1)  # (B,) the first real column
    lengths = real.sum(dim=1)  # (B,)
    ids, first_list, length_list = sequences.tolist(), first.tolist(), lengths.tolist()
    texts = [ids[b][first_list[b]:first_list[b] + length_list[b]] for b in range(batch)]
    packed = pack(texts, [1] * batch, 0, sequences.device)  # any pad id: it is never read
    logits = packed.logits(model)  # (R, L, V)
    in_row = torch.tensor([row for row, _ in packed.places], device=sequences.device)  # (B,)
    at = torch.tensor([offset for _, offset in packed.places], device=sequences.device)  # (B,)
    # Column P - 1 + t of the original row predicts response token t; past a row's last real
    # token (its response padding) any real position of the row will do.
    columns = torch.arange(width - response_length - 1, width - 1, device=sequences.device)
    index = at.unsqueeze(1) + (columns.unsqueeze(0) - first.unsqueeze(1))  # (B, T)
    index = torch.minimum(index, (at + lengths - 1).unsqueeze(1))
    out = logits[in_row.unsqueeze(1).expand(-1, response_length), index]  # (B, T, V)
    return out / temperature if temperature != 1.0 else out


_SUPPORTED: weakref.WeakKeyDictionary[Any, bool] = weakref.WeakKeyDictionary()
"""Per model object: what `supports_packing` found (checked once; gone with the model)."""


def supports_packing(model: Any, device: torch.device) -> bool:
    """Whether ``model`` gives packed sequences the logits it gives them one per row (it
    builds its attention mask with transformers' packed-sequence detection), tried once per
    model on a few fixed sequences of its vocabulary."""
    if model not in _SUPPORTED:
        generator = torch.Generator().manual_seed(0)
        vocab = int(model.config.vocab_size)
        sequences = [torch.randint(1, vocab, (n,), generator=generator).tolist()
                     for n in (5, 11, 3, 8, 2, 13, 7)]
        training = model.training
        model.eval()  # dropout would tell two identical forwards apart
        try:
            _SUPPORTED[model] = packing_matches(model, sequences, [1] * len(sequences), 0,
                                                device)
        finally:
            model.train(training)
    return _SUPPORTED[model]


def first_fit(lengths: list[int], row_length: int) -> list[list[int]]:
    """Indices of ``lengths`` in rows of at most ``row_length``: longest first, each into the
    first row it fits."""
    rows: list[list[int]] = []
    free: list[int] = []
    for index in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        row = next((r for r, space in enumerate(free) if lengths[index] <= space), None)
        if row is None:
            rows.append([])
            free.append(row_length)
            row = len(rows) - 1
        rows[row].append(index)
        free[row] -= lengths[index]
    return rows


@torch.no_grad()
def packing_matches(model: Any, sequences: list[list[int]], starts: list[int], pad_id: int,
                    device: torch.device, tolerance: float = 1e-3) -> bool:
    """Whether ``model`` gives packed sequences the response log-probabilities it gives them
    one per row (it builds its attention mask with transformers' packed-sequence detection)."""
    if len(sequences) < 2:
        return False
    alone = pack(sequences, starts, pad_id, device, packed=False)
    together = pack(sequences, starts, pad_id, device)
    if together.input_ids.shape[0] == len(sequences):  # nothing shares a row: nothing shown
        return False
    expected = alone.response_logps(alone.logits(model))
    actual = together.response_logps(together.logits(model))
    return bool(torch.allclose(expected, actual, atol=tolerance, rtol=0))
