"""Byte-level BPE tokenizers trained with `tokenizers`, in the two shapes real checkpoints ship.

- ``byte_level`` (GPT-2, Qwen2, Llama 3): every byte is a symbol (NUL included), a regex splits
  text into words first, and merges join bytes within a word, a leading space included, so
  ``" world"`` is one token whether it ends a prompt or starts a completion.
- ``sentencepiece`` (Mistral, Gemma): spaces become ``▁`` and start a word, merges work on
  characters, and a character outside the vocabulary falls back to its UTF-8 bytes
  (``<0xE6><0x97><0xA5>``), so a model can sample the first byte of a character alone.

Digits are always split one per token, as Qwen2, Gemma and Mistral do. Llama 3 (groups of up
to three) and GPT-2 (whole runs) do not; here they do too, so that the arithmetic the world
pretrains on stays learnable by a tiny model (a two-digit number as one token turns addition
into a lookup table of 10,000 facts).
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

WORD_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
"""Qwen2's pre-tokenizer regex (digits one at a time); Llama 3's differs only in ``\\p{N}{1,3}``."""

BYTE_TOKENS = [f"<0x{value:02X}>" for value in range(256)]


def train_byte_level(texts: Iterable[str], vocab_size: int, special_tokens: list[str]) -> Tokenizer:
    """A byte-level BPE of ``vocab_size`` ids: ``special_tokens`` first, in order."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(WORD_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special_tokens,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return tokenizer


def train_sentencepiece(texts: Iterable[str], vocab_size: int, special_tokens: list[str],
                        prepend_space: bool) -> Tokenizer:
    """A sentencepiece-style BPE with byte fallback: ``special_tokens``, then the 256 byte
    tokens, then the learned pieces; ``<unk>`` must be among the special tokens.
    ``prepend_space``: a text starts with ``▁`` (Mistral and
    Llama 2 do, Gemma does not)."""
    metaspace = pre_tokenizers.Metaspace(replacement="▁",
                                         prepend_scheme="first" if prepend_space else "never")
    learner = Tokenizer(models.BPE())
    learner.pre_tokenizer = pre_tokenizers.Sequence([
        metaspace, pre_tokenizers.Digits(individual_digits=True)])
    reserved = len(special_tokens) + len(BYTE_TOKENS)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - reserved, limit_alphabet=120,
                                  show_progress=False)
    learner.train_from_iterator(texts, trainer=trainer)
    learned = json.loads(learner.to_str())["model"]
    vocab = {token: index for index, token in enumerate([*special_tokens, *BYTE_TOKENS])}
    for piece in sorted(learned["vocab"], key=learned["vocab"].__getitem__):
        vocab.setdefault(piece, len(vocab))
    merges = [tuple(merge) if isinstance(merge, list) else tuple(merge.split(" "))
              for merge in learned["merges"]]
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>",
                                     byte_fallback=True, fuse_unk=True))
    tokenizer.add_special_tokens(special_tokens)
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        metaspace, pre_tokenizers.Digits(individual_digits=True)])
    tokenizer.decoder = decoders.Sequence([
        decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
        *([decoders.Strip(" ", 1, 0)] if prepend_space else [])])
    return tokenizer
