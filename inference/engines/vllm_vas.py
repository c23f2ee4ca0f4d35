"""Value Augmented Sampling inside vLLM: a V1 logits processor that steers guided rows.

vLLM builds one `ValueGuidedLogits` per engine (it is registered engine-wide) in the process
that runs the model, the engine-core child here, and loads it there by its name, `PROCESSOR`.
A request asks for guidance through `SamplingParams.extra_args[VAS_KEY]` (built by
`vas_extra_args`); every other row passes through untouched, and with no guided row in the
batch `apply` returns at once.

For a guided row each value model keeps a KV cache of the prefix s (prompt ⊕ tokens so far),
as the torch engine does: `apply` branches every guided row's prefix into its k candidates,
one batched forward per value model for all the rows it guides, V(s⊕a), and
`inference.vas.guided_logits` steers each row. The token vLLM then samples shows up
in the request's live output list at the next `apply`, and that candidate's cache becomes the
new prefix. Anything else seen there (a preempted request resumed, outputs folded into the
prompt, a discarded sample) is caught by comparing with the tokens the caches hold: a
discarded sample keeps the prefix, and any other mismatch recomputes it from the full text.

Rows follow vLLM's `BatchUpdate` through `process_dict_updates`: an added row replaces whatever
state its index held (removed indices that a new request fills are not listed as removed), a
one-way move a→b carries a's state to b and leaves a empty, a swap exchanges the two, and the
indices still listed as removed lose their state.

vLLM applies this processor before penalties, temperature, top-k and top-p (`Sampler.
apply_logits_processors`), the order the torch engine keeps. Output token lists are read only in
`apply`: with async scheduling vLLM fills in the previous step's token just before sampling.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor
from vllm import SamplingParams
from vllm.v1.sample.logits_processor import (
    BatchUpdate,
    LogitsProcessor,
    process_dict_updates,
)

from inference.catalog import VALUE_MODEL, ServedModel
from inference.engines.guides import Guide, score_candidates
from inference.engines.kv import prefill
from inference.engines.models import ResidentModels
from inference.vas import candidates, guided_logits

if TYPE_CHECKING:
    from vllm.config import VllmConfig

VAS_KEY = "alignd_vas"
"""The `SamplingParams.extra_args` entry of a value-guided request."""
PROCESSOR = "inference.engines.vllm_vas:ValueGuidedLogits"
"""How vLLM finds the processor in the process it spawns (`AsyncEngineArgs.logits_processors`)."""
VALUE_MODEL_BYTES = 4 << 30
"""Value-model weights kept resident per engine once no running request uses them."""


@dataclass(frozen=True)
class VasArgs:
    """What a guided request carries to the engine core: value-model folders, β_i and k."""

    value_models: tuple[str, ...]
    betas: tuple[float, ...]
    k: int

    def extra_args(self) -> dict[str, Any]:
        """Plain values only: `extra_args` crosses into the engine core by msgspec."""
        return {VAS_KEY: {"value_models": list(self.value_models), "betas": list(self.betas),
                          "k": self.k}}

    @classmethod
    def of(cls, params: SamplingParams) -> VasArgs | None:
        """The request's guidance, None if it has none; ValueError if it is malformed."""
        raw = (params.extra_args or {}).get(VAS_KEY)
        if raw is None:
            return None
        # ValueError throughout: vLLM turns it (not TypeError) into a 400 for the request.
        if not isinstance(raw, dict):
            raise ValueError(  # noqa: TRY004
                f"extra_args[{VAS_KEY!r}] must be an object, got {type(raw).__name__}")
        paths, betas, k = raw.get("value_models"), raw.get("betas"), raw.get("k")
        if not (isinstance(paths, list) and paths and all(isinstance(p, str) for p in paths)):
            raise ValueError(f"{VAS_KEY}.value_models must be a non-empty list of folders, "
                             f"got {paths!r}")
        if not (isinstance(betas, list) and len(betas) == len(paths)
                and all(isinstance(b, int | float) and not isinstance(b, bool) for b in betas)):
            raise ValueError(f"{VAS_KEY}.betas must be {len(paths)} numbers, one per value "
                             f"model, got {betas!r}")
        if not (isinstance(k, int) and not isinstance(k, bool) and k >= 1):
            raise ValueError(f"{VAS_KEY}.k must be an integer >= 1, got {k!r}")
        return cls(tuple(paths), tuple(float(b) for b in betas), k)


WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")


def check_loadable(folder: Path) -> None:
    """ValueError unless ``folder`` looks like a model `from_pretrained` can load: a readable
    config.json naming its model type, and weights. Checked in the API process, because a load
    that fails inside the engine core takes the core down with every request it holds."""
    try:
        config = json.loads((folder / "config.json").read_text())
    except FileNotFoundError:
        raise ValueError(f"value model folder {str(folder)!r} has no config.json") from None
    except (OSError, ValueError) as exc:
        raise ValueError(f"value model folder {str(folder)!r}: config.json is not readable "
                         f"JSON ({exc})") from None
    if not isinstance(config, dict) or "model_type" not in config:
        raise ValueError(f"value model folder {str(folder)!r}: config.json names no model_type")
    if not any((folder / name).is_file() for name in WEIGHT_FILES):
        raise ValueError(f"value model folder {str(folder)!r} has no weights "
                         f"({' or '.join(WEIGHT_FILES)})")


@dataclass
class _GuidedRow:
    """One guided request's state, wherever its row is in the batch this step."""

    prompt: list[int]
    outputs: list[int]
    """vLLM's live list of the request's output tokens (read, never written)."""
    guides: list[Guide]
    betas: Tensor
    """(M,) β_i, on the logits' device."""
    k: int
    cached: list[int] = field(default_factory=list)
    """The output tokens every guide's `prefix` holds after the prompt."""
    pending: list[int] = field(default_factory=list)
    """The candidates of the guides' last pass, in candidate order."""

    def propose(self, logits: Tensor) -> Tensor:
        """(k,) candidate ids for this row's (V,) base logits, prefixes brought up to date."""
        self._sync()
        candidate_ids = candidates(logits, self.k)  # (k,)
        self.pending = candidate_ids.tolist()
        return candidate_ids

    def steer(self, logits: Tensor, candidate_ids: Tensor) -> Tensor:
        """(V,) guided logits, once every guide holds its `values` for ``candidate_ids``."""
        values = torch.stack([guide.values for guide in self.guides])  # type: ignore[misc]
        return guided_logits(logits, candidate_ids, values, self.betas)  # values: (M, k)

    def _sync(self) -> None:
        """Bring every guide's prefix cache up to the prompt ⊕ the outputs so far."""
        outputs, held = self.outputs, len(self.cached)
        in_step = self.guides[0].ready and outputs[:held] == self.cached
        if in_step and len(outputs) == held:
            return  # the last sample was discarded (e.g. a chunked prefill): same prefix
        if in_step and len(outputs) == held + 1 and outputs[-1] in self.pending:
            row = self.pending.index(outputs[-1])  # the sampled candidate's cache
            for guide in self.guides:
                guide.choose(row)
            self.cached.append(outputs[-1])
            return
        self._recompute()

    def _recompute(self) -> None:
        """Prefill every value model on the prompt ⊕ all outputs (first step, or resync)."""
        outputs = list(self.outputs)
        if any(token < 0 for token in outputs):  # an async-scheduling placeholder
            raise RuntimeError("value guidance saw an unresolved output token; vLLM fills "
                               "them in before logits processors run")
        for guide in self.guides:
            guide.prefix, _ = prefill(guide.forward, [self.prompt + outputs], 0,
                                      self.betas.device)
            guide.forget_step()
        self.cached, self.pending = outputs, []


class ValueGuidedLogits(LogitsProcessor):
    """VAS for the rows whose request carries `extra_args[VAS_KEY]`; a no-op for the rest."""

    def __init__(self, vllm_config: VllmConfig, device: torch.device, is_pin_memory: bool):
        self._device = device
        self._models = ResidentModels(device, torch.float32, VALUE_MODEL_BYTES)
        self._rows: dict[int, _GuidedRow] = {}
        """Batch row index → its request's state, guided rows only."""

    @classmethod
    def validate_params(cls, sampling_params: SamplingParams) -> None:
        """At admission, in the API process: refuse malformed guidance before it is queued,
        and a value-model folder that is gone (loading it would fail in the engine core,
        which cannot fail one request alone)."""
        args = VasArgs.of(sampling_params)
        for folder in args.value_models if args else ():
            check_loadable(Path(folder))

    def is_argmax_invariant(self) -> bool:
        return False  # it changes which token greedy decoding picks

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        before = list(self._rows.values())
        process_dict_updates(self._rows, batch_update, self._admit)
        if before:
            kept = {id(row) for row in self._rows.values()}
            for row in before:
                if id(row) not in kept:
                    self._release(row)

    def apply(self, logits: Tensor) -> Tensor:
        """(num_reqs, V) float32 logits, guided rows steered in place."""
        if not self._rows:
            return logits
        with torch.inference_mode():
            proposed = {index: row.propose(logits[index]) for index, row in self._rows.items()}
            score_candidates([(guide, proposed[index]) for index, row in self._rows.items()
                              for guide in row.guides])
            for index, row in self._rows.items():
                logits[index] = row.steer(logits[index], proposed[index])
        return logits

    def _admit(self, params: SamplingParams, prompt: list[int] | None,
               outputs: list[int]) -> _GuidedRow | None:
        args = VasArgs.of(params)
        if args is None:
            return None
        if prompt is None:
            raise ValueError("value guidance needs the prompt's token ids (not embeddings)")
        guides = []
        for folder in args.value_models:
            served = ServedModel.folder(folder, VALUE_MODEL)
            guides.append(Guide(served, self._models.acquire(served)))
        return _GuidedRow(prompt=list(prompt), outputs=outputs, guides=guides, k=args.k,
                          betas=torch.tensor(args.betas, dtype=torch.float32,
                                             device=self._device))

    def _release(self, row: _GuidedRow) -> None:
        for guide in row.guides:
            self._models.release(guide.served)
        row.guides.clear()

