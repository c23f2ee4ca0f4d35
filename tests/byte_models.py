"""Byte-level checkpoints edited to write chosen bytes: NUL, control characters, bytes that
are not UTF-8. A byte-level BPE model can sample any byte; these make it do so on every step,
deterministically, so tests see what a model's output can hold.

The edit: every layer's writes to the residual stream (attention's and the MLP's output
projections) are zeroed, so the last hidden state is the current token's embedding after the
final RMSNorm; every embedding row is all ones and the favoured tokens' rows all twos. RMSNorm
maps both to the same unit vector h, so with tied (or equally edited) output embeddings a
favoured token's logit is 2·h·1 and every other token's h·1: with a hidden size of 128, e^128
times less likely. Several favoured tokens are equally likely."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase
from transformers.convert_slow_tokenizer import bytes_to_unicode

BYTE_CHARS = bytes_to_unicode()
"""Byte → the character a byte-level BPE vocabulary writes it as (NUL is 'Ā')."""


def byte_token_id(tokenizer: PreTrainedTokenizerBase, byte: int) -> int:
    token_id = tokenizer.convert_tokens_to_ids(BYTE_CHARS[byte])
    assert isinstance(token_id, int) and token_id != tokenizer.unk_token_id, byte
    return token_id


def make_byte_writer(source: Path, out: Path, favoured: bytes,
                     tokens: Sequence[str] = ()) -> Path:
    """A copy of the byte-level checkpoint ``source`` (a Qwen2 or Llama layout) in ``out``
    whose every next token is one of the byte tokens of ``favoured`` or one of ``tokens``
    (say the eos, for empty responses), each equally likely: give one byte alone for an output
    that does not depend on the sampling."""
    tokenizer = AutoTokenizer.from_pretrained(source)
    ids = [byte_token_id(tokenizer, byte) for byte in favoured]
    ids += [tokenizer.convert_tokens_to_ids(token) for token in tokens]
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        tables = (model.get_input_embeddings().weight, model.get_output_embeddings().weight)
        for table in {id(t): t for t in tables}.values():  # one table when they are tied
            table.fill_(1.0)
            table[ids] = 2.0
        model.model.norm.weight.fill_(1.0)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
