"""Model heads: how a reward is read off a trained reward model folder (the file beside its
weights), and the value head of a value model or a PPO critic (`load_value_model`).

Reward heads.

A classifier reward model is a save_pretrained `AutoModelForSequenceClassification` and needs
no more. An implicit one is a save_pretrained causal LM whose reward is
r(x, y) = beta * (Σ_t log π(y_t | x, y_<t) − Σ_t log π_ref(y_t | x, y_<t)) over the response's
tokens; `alignd_reward.json` beside its weights says so:

    {"head": "implicit", "beta": 0.5, "reduction": "sum",
     "reference": null | {"model": <registry id or null>, "path": <from_pretrained source>}}

The trainer writes it (`write_head`), the reward service reads it (`read_head`): a folder
without the file is a classifier.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForTokenClassification, PreTrainedModel

from services.methods import RewardModelHyperparameters

HEAD_FILE = "alignd_reward.json"


@dataclass(frozen=True)
class Reference:
    path: str
    """What from_pretrained loads: the frozen model the job started from."""
    model: str | None = None
    """Its registry id, when the job named one (informational)."""


@dataclass(frozen=True)
class ImplicitHead:
    beta: float
    reference: Reference | None
    """None: reference-free, r = beta * Σ log π(y|x)."""

    def to_json(self) -> dict[str, Any]:
        reference = None if self.reference is None else {"model": self.reference.model,
                                                         "path": self.reference.path}
        return {"head": "implicit", "beta": self.beta, "reduction": "sum",
                "reference": reference}


def implicit_head(hp: RewardModelHyperparameters, base_model: str | None,
                  base_model_path: Path) -> ImplicitHead | None:
    """The head a job with these hyperparameters trains; None for the classifier head."""
    if hp.head != "implicit":
        return None
    assert hp.beta is not None  # the hyperparameters fill the implicit head's defaults
    reference = Reference(str(base_model_path), base_model) if hp.reference == "base" else None
    return ImplicitHead(beta=hp.beta, reference=reference)


def write_head(folder: Path, head: ImplicitHead | None) -> None:
    """Record an implicit head in `folder` (a classifier writes nothing)."""
    if head is not None:
        (folder / HEAD_FILE).write_text(json.dumps(head.to_json(), indent=2) + "\n")


def read_head(folder: Path) -> ImplicitHead | None:
    """The implicit head `folder` records, or None for a classifier (no file)."""
    try:
        raw = json.loads((folder / HEAD_FILE).read_text())
    except FileNotFoundError:
        return None
    if raw.get("head") != "implicit" or raw.get("reduction", "sum") != "sum":
        raise ValueError(f"{folder / HEAD_FILE} describes an unknown reward head "
                         f"{raw.get('head')!r} (reduction {raw.get('reduction')!r}); this "
                         "version reads 'implicit' with reduction 'sum'")
    reference = raw.get("reference")
    return ImplicitHead(
        beta=float(raw["beta"]),
        reference=None if reference is None else Reference(str(reference["path"]),
                                                           reference.get("model")))


def load_value_model(source: Path, pad_id: int, device: torch.device,
                     zero_head: bool) -> PreTrainedModel:
    """The value model in float32: from a base causal LM (the head is new; `zero_head` zeroes
    it) or from a checkpoint. No dropout in the head, so a value is a function of the text."""
    config = AutoConfig.from_pretrained(source, num_labels=1, id2label={0: "value"},
                                        label2id={"value": 0}, pad_token_id=pad_id)
    config.classifier_dropout = 0.0  # read by the head; not every config class declares it
    model = AutoModelForTokenClassification.from_pretrained(
        source, config=config, dtype=torch.float32, device_map=device)
    if zero_head:
        head = token_head(model)
        with torch.no_grad():
            head.weight.zero_()
            if head.bias is not None:
                head.bias.zero_()
    return model


def token_head(model: PreTrainedModel) -> torch.nn.Linear:
    """A token classifier's output layer: ``score`` in the Llama-style families, ``classifier``
    in GPT-2's and BERT's."""
    head = getattr(model, "score", None) or getattr(model, "classifier", None)
    if not isinstance(head, torch.nn.Linear):
        raise TypeError(f"{type(model).__name__} has no linear token-classification head "
                         "(score or classifier) a value model can use")
    return head
