"""`method.dpo`: direct preference optimisation on preference pairs, and its relatives.

`loss` picks the objective (`trainer.algorithms.preference`): "sigmoid" is DPO (Rafailov et
al. 2023), "ipo" IPO (Azar et al. 2023), "conservative" cDPO (DPO with label smoothing ε),
"tdpo" TDPO (Zeng et al. 2024: DPO's margin minus a token-level sequential KL term). The
reference π_ref is the job's base model unless `reference` names another registered model.
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import Field, model_validator

from services.methods.base import (
    FieldError,
    LoraConfig,
    MethodSection,
    TrainingHyperparameters,
    field_errors,
)

SHAPES = ("preference", "conversational_preference", "openai_preference")
"""The row shapes (`services.datasets.SHAPES`) it trains on: pairs, as text or messages."""

LOSSES = ("sigmoid", "ipo", "conservative", "tdpo")
CDPO_DEFAULT_SMOOTHING = 0.1
"""ε of cDPO when label_smoothing is not given (Mitchell 2023, "A note on DPO with noisy
preferences")."""


class DpoHyperparameters(TrainingHyperparameters):
    """The step knobs count preference pairs: a step reads batch_size ×
    gradient_accumulation_steps pairs."""

    named_model_fields: ClassVar[dict[str, tuple[str, ...]]] = {
        "reference": ("base", "fine_tuned")}

    beta: Annotated[float, Field(gt=0, le=100)] = 0.1
    """β: the strength of the implicit KL to the reference (IPO: the target margin is
    1/(2β))."""
    loss: Literal["sigmoid", "ipo", "conservative", "tdpo"] = "sigmoid"
    label_smoothing: Annotated[float, Field(ge=0, lt=0.5)] | None = None
    """ε, the assumed share of flipped labels (cDPO); "conservative" defaults it to 0.1,
    "sigmoid" to 0; the other losses take none."""
    tdpo_alpha: Annotated[float, Field(ge=0, le=100)] = 1.0
    """TDPO: weight α of the sequential-KL term (1 with no stop-gradient is TDPO1; the paper's
    TDPO2 uses 0.5 with tdpo_stop_gradient)."""
    tdpo_stop_gradient: bool = False
    """TDPO2: no gradient through the chosen response's sequential KL."""
    reference: Annotated[str, Field(min_length=1)] | None = None
    """A registered model id to hold the policy near; None: the job's base model (with LoRA,
    the same weights with the adapter off). It must share the base model's tokenizer."""
    sft_coefficient: Annotated[float, Field(ge=0, le=100)] = 0.0
    """Weight of the chosen responses' per-token NLL added to the loss (RPO, Pang et al.
    2024)."""
    lora: LoraConfig | None = None
    """Train a LoRA adapter (peft) instead of all weights."""
    learning_rate: Annotated[float, Field(gt=0, le=1.0)] = 5e-6

    @model_validator(mode="after")
    def _loss_options(self) -> DpoHyperparameters:
        errors: list[FieldError] = []
        if self.label_smoothing is not None and self.loss in ("ipo", "tdpo"):
            errors.append(FieldError("label_smoothing", f"label_smoothing is for losses "
                                     f"'sigmoid' and 'conservative', not {self.loss!r}",
                                     self.label_smoothing))
        # Compared with the defaults, not by whether they were given: a stored job's method
        # is read back with every field present.
        tdpo_set = [name for name, default in (("tdpo_alpha", 1.0),
                                               ("tdpo_stop_gradient", False))
                    if getattr(self, name) != default]
        if tdpo_set and self.loss != "tdpo":
            errors.append(FieldError(tdpo_set[0], f"{tdpo_set[0]} is an option of loss "
                                     f"'tdpo', not {self.loss!r}; remove it or set loss to "
                                     "'tdpo'", getattr(self, tdpo_set[0])))
        if errors:
            raise field_errors(type(self).__name__, errors)
        if self.label_smoothing is None and self.loss in ("sigmoid", "conservative"):
            self.label_smoothing = (CDPO_DEFAULT_SMOOTHING if self.loss == "conservative"
                                    else 0.0)
        return self


class DpoMethod(MethodSection):
    hyperparameters: DpoHyperparameters = Field(default_factory=DpoHyperparameters)
