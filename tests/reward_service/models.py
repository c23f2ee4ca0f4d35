"""Tiny reward models for tests: the demo base with a sequence-classification head."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoTokenizer, LlamaForSequenceClassification


def make_reward_model(base: Path, out: Path, num_labels: int, seed: int) -> Path:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForSequenceClassification.from_pretrained(base, num_labels=num_labels)
        # from_pretrained may leave the new head at zeros; a seeded normal head is distinct.
        torch.nn.init.normal_(model.score.weight, std=0.5)
    out.mkdir(parents=True, exist_ok=True)
    AutoTokenizer.from_pretrained(base).save_pretrained(out)
    model.save_pretrained(out)
    return out
