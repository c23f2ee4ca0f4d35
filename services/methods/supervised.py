"""`method.supervised`: next-token cross-entropy on the responses of chat or prompt rows."""

from __future__ import annotations

from pydantic import Field

from services.methods.base import LoraConfig, MethodSection, TrainingHyperparameters


class SupervisedHyperparameters(TrainingHyperparameters):
    lora: LoraConfig | None = None
    """Train a LoRA adapter (peft) instead of all weights."""


class SupervisedMethod(MethodSection):
    hyperparameters: SupervisedHyperparameters = Field(default_factory=SupervisedHyperparameters)
