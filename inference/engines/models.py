"""Weights the torch engine keeps resident: causal LMs, LoRA adapters over them, value models.

An LRU bounded by parameter bytes. An adapter is loaded onto its base's resident copy with
peft under the adapter's registry id (served over the base, never merged); the base alone then
runs with the adapters disabled. Models a running batch uses are never evicted.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from transformers import (
    AutoModelForCausalLM,
    AutoModelForTokenClassification,
    PreTrainedModel,
)

from inference.catalog import VALUE_MODEL, ServedModel
from inference.engines.kv import Forward


def _nbytes(model: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))


@dataclass
class Resident:
    """One folder's weights in memory, and the adapters loaded onto it."""

    folder: str
    model: Any = field(repr=False)
    """A PreTrainedModel, or a peft PeftModel once an adapter was loaded onto it."""
    nbytes: int
    adapters: set[str] = field(default_factory=set)
    users: int = 0


class ResidentModels:
    def __init__(self, device: torch.device, dtype: torch.dtype, capacity_bytes: int):
        self.device, self.dtype, self.capacity = device, dtype, capacity_bytes
        self._resident: OrderedDict[str, Resident] = OrderedDict()

    def acquire(self, served: ServedModel) -> Forward:
        """A forward function for ``served`` (loading it if needed); pair with `release`."""
        if served.kind == VALUE_MODEL:
            resident = self._get(served.path, AutoModelForTokenClassification)
            forward = _value_forward(resident.model)
        elif served.is_adapter:
            resident = self._get(served.base_path, AutoModelForCausalLM)
            self._attach(resident, served)
            forward = _adapter_forward(resident.model, served.id)
        else:
            resident = self._get(served.path, AutoModelForCausalLM)
            forward = _base_forward(resident)
        resident.users += 1
        return forward

    def pin(self, folder: str, model: Any) -> None:
        """Serve ``model`` (already in memory, e.g. a policy being trained) for ``folder``, its
        weights read live at every forward and never evicted. The caller keeps it in eval mode
        while it is sampled from and does not change its weights mid-generation."""
        self._resident[folder] = Resident(folder=folder, model=model, nbytes=_nbytes(model),
                                          users=1)
        self._evict()

    def release(self, served: ServedModel) -> None:
        folder = served.base_path if served.is_adapter else served.path
        if folder in self._resident:
            self._resident[folder].users -= 1

    def _get(self, folder: str, loader: Any) -> Resident:
        if folder in self._resident:
            self._resident.move_to_end(folder)
            return self._resident[folder]
        model: PreTrainedModel = loader.from_pretrained(folder, dtype=self.dtype)
        model.to(self.device)  # type: ignore[arg-type]
        model.eval()
        resident = Resident(folder=folder, model=model, nbytes=_nbytes(model))
        self._resident[folder] = resident
        self._evict()
        return resident

    def _attach(self, resident: Resident, served: ServedModel) -> None:
        if served.id in resident.adapters:
            return
        from peft import PeftModel  # only adapters need peft

        if isinstance(resident.model, PeftModel):
            resident.model.load_adapter(served.path, adapter_name=served.id)
        else:
            resident.model = PeftModel.from_pretrained(resident.model, served.path,
                                                       adapter_name=served.id)
        resident.model.to(self.device).eval()
        resident.adapters.add(served.id)

    def _evict(self) -> None:
        total = sum(r.nbytes for r in self._resident.values())
        for folder in list(self._resident):
            if total <= self.capacity or len(self._resident) <= 1:
                return
            resident = self._resident[folder]
            if resident.users == 0:
                total -= resident.nbytes
                del self._resident[folder]


def _base_forward(resident: Resident) -> Forward:
    def forward(**inputs: Any) -> Tensor:
        model = resident.model  # read at call time: an adapter may wrap it later
        context = model.disable_adapter() if resident.adapters else contextlib.nullcontext()
        with context:
            return model(**inputs, use_cache=True,  # type: ignore[no-any-return]
                         logits_to_keep=1).logits.float()
    return forward


def _adapter_forward(model: Any, adapter: str) -> Forward:
    def forward(**inputs: Any) -> Tensor:
        model.set_adapter(adapter)
        return model(**inputs, use_cache=True,  # type: ignore[no-any-return]
                     logits_to_keep=1).logits.float()
    return forward


def _value_forward(model: PreTrainedModel) -> Forward:
    """(B, T) values V(s_≤t) of a token-classification value model (num_labels = 1)."""
    def forward(**inputs: Any) -> Tensor:
        return model(**inputs, use_cache=True).logits[..., 0].float()  # type: ignore[no-any-return]
    return forward

