"""`text_similarity` metrics: each a plain `(output, reference) -> float in [0, 1]`.

The libraries are imported where used: they take about a second to import together, and a
service that never grades text similarity should not pay for them."""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from typing import Any

Metric = Callable[[str, str], float]


def fuzzy_match(output: str, reference: str) -> float:
    """rapidfuzz's normalized Indel similarity: 1 - indel_distance / (len(a) + len(b))."""
    from rapidfuzz import fuzz

    return fuzz.ratio(output, reference) / 100.0


def bleu(output: str, reference: str) -> float:
    """sacrebleu's sentence BLEU (13a tokens, exponential smoothing, effective order) / 100."""
    import sacrebleu

    return sacrebleu.sentence_bleu(output, [reference]).score / 100.0


def gleu(output: str, reference: str) -> float:
    """Google-BLEU (Wu et al. 2016, nltk): min(n-gram precision, recall) over 1..4-grams,
    on the same 13a tokens as BLEU."""
    from nltk.translate.gleu_score import sentence_gleu

    tokenize = _tokenizer_13a()
    return float(sentence_gleu([tokenize(reference).split()], tokenize(output).split()))


@lru_cache(maxsize=1)
def _tokenizer_13a() -> Callable[[str], str]:
    from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

    return Tokenizer13a()


@lru_cache(maxsize=1)
def _rouge_scorer() -> Any:
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=False)


def _rouge(kind: str) -> Metric:
    def metric(output: str, reference: str) -> float:
        # rouge-score's argument order is (target, prediction).
        return float(_rouge_scorer().score(reference, output)[kind].fmeasure)

    metric.__doc__ = f"rouge-score's {kind} F-measure (lower-cased alphanumeric tokens)."
    return metric


METRICS: dict[str, Metric] = {
    "fuzzy_match": fuzzy_match,
    "bleu": bleu,
    "gleu": gleu,
    "rouge_1": _rouge("rouge1"),
    "rouge_2": _rouge("rouge2"),
    "rouge_l": _rouge("rougeL"),
}

# OpenAI metrics this server refuses, and why (said in the 400).
UNSUPPORTED_METRICS: dict[str, str] = {
    "meteor": "METEOR needs the WordNet corpus, which no pip package ships; nltk would "
    "download it at run time",
    "cosine": "cosine similarity needs an embedding model, which this server does not load "
    "for graders",
}


def similarity(metric: str, output: str, reference: str) -> float:
    """The metric's value, clamped to [0, 1] against floating-point drift."""
    return min(max(METRICS[metric](output, reference), 0.0), 1.0)
