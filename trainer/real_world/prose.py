"""Deterministic filler prose: enough distinct words for a BPE vocabulary in the thousands, and
characters outside ASCII (accents, Greek, CJK, emoji) that byte-level and byte-fallback
tokenizers split into several tokens each."""

from __future__ import annotations

import random
from collections.abc import Iterator

_ONSETS = ["", "b", "br", "c", "ch", "d", "dr", "f", "fl", "g", "gr", "h", "j", "k", "l", "m",
           "n", "p", "pl", "qu", "r", "s", "sh", "sl", "st", "t", "th", "tr", "v", "w", "z"]
_VOWELS = ["a", "e", "i", "o", "u", "ai", "ea", "ee", "ou", "oo", "y"]
_CODAS = ["", "", "n", "r", "s", "t", "l", "m", "nd", "st", "ck", "ng", "rd", "sk"]

WIDE_WORDS = ["café", "naïve", "Straße", "señor", "Ελληνικά", "日本語", "東京", "数学", "🙂",
              "🚀", "über", "crème brûlée", "Дом", "π≈3.14", "½", "€5", "—"]
"""Words of two to four UTF-8 bytes a character: sampled byte by byte, a model can stop in the
middle of one."""


def words(seed: int, count: int = 3000) -> list[str]:
    """``count`` distinct pseudo-words, the same list for a seed."""
    rng = random.Random(f"prose-words:{seed}")
    found: dict[str, None] = {}
    while len(found) < count:
        syllables = rng.choice((1, 1, 2, 2, 2, 3))
        word = "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS)
                       for _ in range(syllables))
        if len(word) > 1:
            found.setdefault(word)
    return list(found)


def sentences(seed: int, wide: bool = True, vocabulary: int = 3000) -> Iterator[str]:
    """An endless stream of sentences over ``vocabulary`` `words` (Zipf-like frequencies),
    and `WIDE_WORDS` unless ``wide`` is false (a tokenizer trained without them splits them
    into bytes)."""
    vocabulary = words(seed, vocabulary)
    weights = [1.0 / (rank + 1) for rank in range(len(vocabulary))]
    rng = random.Random(f"prose-sentences:{seed}")
    while True:
        length = rng.randint(4, 12)
        picked = rng.choices(vocabulary, weights=weights, k=length)
        if wide and rng.random() < 0.3:
            picked[rng.randrange(length)] = rng.choice(WIDE_WORDS)
        sentence = " ".join(picked)
        yield sentence[0].upper() + sentence[1:] + rng.choice((".", ".", "?", "!"))
