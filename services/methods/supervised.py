"""`method.supervised`: next-token cross-entropy on the responses of chat or prompt rows."""

from __future__ import annotations

from pydantic import Field

from services.methods.base import LoraConfig, MethodSection, TrainingHyperparameters

SHAPES = ("chat", "prompt_completion", "conversational_prompt_completion", "text")
"""The row shapes (`services.datasets.SHAPES`) it trains on: the loss covers the assistant
turns, the completion, or (`text`) every token."""


class SupervisedHyperparameters(TrainingHyperparameters):
    lora: LoraConfig | None = None
    """Train a LoRA adapter (peft) instead of all weights."""


class SupervisedMethod(MethodSection):
    hyperparameters: SupervisedHyperparameters = Field(default_factory=SupervisedHyperparameters)
