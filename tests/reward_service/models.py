"""Tiny reward models for tests: the demo base with a sequence-classification head, or the demo
base itself, perturbed, read as an implicit (log-probability) reward model."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoTokenizer, LlamaForCausalLM, LlamaForSequenceClassification

from modeling.heads import ImplicitHead, Reference, write_head


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


def make_implicit_reward_model(base: Path, out: Path, seed: int, beta: float,
                               reference: bool) -> Path:
    """The base LM with seeded noise on its output layer (so it differs from its reference),
    saved with `alignd_reward.json` naming the base as reference if `reference`."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM.from_pretrained(base)
        with torch.no_grad():
            model.lm_head.weight.add_(0.5 * torch.randn_like(model.lm_head.weight))
    out.mkdir(parents=True, exist_ok=True)
    AutoTokenizer.from_pretrained(base).save_pretrained(out)
    model.save_pretrained(out)
    write_head(out, ImplicitHead(beta=beta, reference=Reference(str(base)) if reference else None))
    return out
