"""The inference engines run in process, for trainers: the one entry `trainer` uses.

A trainer samples rollouts through the engines that serve requests. Models are folders by path
(no registry), and a folder can be served from a model the trainer holds in memory (`pin`):

- `LocalGenerator` runs the torch engine (continuous batching, the serving sampling code and
  stop handling) over the pinned model's live weights: no copy, nothing written to disk;
- `BatchGenerator` decodes a trainer's rollouts as one static batch with `Decoder`, a few
  torch ops per layer over the pinned model's live weights (Llama, Qwen2, Mistral, Gemma),
  several times cheaper a step than the transformers forward on a small model; other models
  go to the torch engine, and the caller is told which path a model's rollouts take;
- `VllmGenerator` runs vLLM's engine in this process and pushes the pinned model's current
  weights into it before a generation that follows an update (`refresh`; a LoRA policy's
  adapter is merged into the pushed copy), as online RL frameworks do with vLLM.

Calls are synchronous.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from transformers import GenerationConfig, PreTrainedTokenizerBase

from inference.catalog import FolderCatalog
from inference.engines.base import GenerationRequest, SamplingOptions
from inference.engines.decoder import Decoder, Unsupported
from inference.engines.decoder_weights import DecoderWeights
from inference.engines.static_batch import decode_static_batch
from inference.engines.torch_engine import TorchEngine
from services.background import BackgroundLoop

__all__ = ["BatchGenerator", "DecoderWeights", "Generator", "LocalGenerator", "Sample",
           "SamplingOptions", "Unsupported", "VllmGenerator", "stop_token_ids"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Sample:
    token_ids: list[int]
    """The sampled ids, through the first stop token when one was sampled; never empty."""
    logprobs: list[float]
    """log p(token) under the model's own distribution (before temperature, top-k, top-p)."""
    finished: bool
    """It ended on a stop token rather than at max_tokens."""


def stop_token_ids(model_path: str | Path, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """The model's generation stop tokens (e.g. <eos> and a chat turn's end), else the eos."""
    try:
        configured = GenerationConfig.from_pretrained(model_path).eos_token_id
    except OSError:  # no generation_config.json
        configured = None
    if configured is None:
        configured = tokenizer.eos_token_id
    ids = [configured] if isinstance(configured, int) else list(configured or [])
    if not ids:
        raise ValueError("the model has no eos token to stop a completion on")
    return ids


class Generator(Protocol):
    def pin(self, folder: str | Path, model: Any) -> None:
        """Serve ``model`` (held in memory) as the folder ``folder``."""

    def refresh(self) -> None:
        """Make the next generation see the pinned model's current weights."""

    def generate(self, folder: str | Path, prompts: Sequence[list[int]],
                 options: Sequence[SamplingOptions]) -> list[Sample]:
        """One sample per prompt, in order."""

    def close(self) -> None: ...


class LocalGenerator:
    """The torch engine; the pinned model is read live, so `refresh` has nothing to do."""

    def __init__(self, *, max_batch_size: int, device: str = "cpu") -> None:
        self._engine = TorchEngine(FolderCatalog(), max_batch_size=max_batch_size, device=device)
        self._loop = BackgroundLoop("local-generator")

    def pin(self, folder: str | Path, model: Any) -> None:
        """Serve ``model`` (in memory, e.g. a policy in training) as the folder ``folder``,
        whose config and tokenizer it shares. Its weights are read live at every forward."""
        self._engine.pin(str(folder), model)

    def refresh(self) -> None:
        """Nothing to push: every `generate` reads the pinned model's weights as they are."""

    def generate(self, folder: str | Path, prompts: Sequence[list[int]],
                 options: Sequence[SamplingOptions]) -> list[Sample]:
        """One sample per prompt (token ids) with its options, in order; all decoded together."""
        return self._loop.run(self._generate(str(folder), prompts, options))

    async def _generate(self, folder: str, prompts: Sequence[list[int]],
                        options: Sequence[SamplingOptions]) -> list[Sample]:
        async def one(index: int) -> Sample:
            request = GenerationRequest(request_id=f"local-{index}", model=folder,
                                        prompt_ids=prompts[index], options=options[index],
                                        stream=False)
            ids: list[int] = []
            logprobs: list[float] = []
            finished = False
            async for steps in self._engine.generate(request):
                ids.extend(step.token_id for step in steps)
                logprobs.extend(step.logprob or 0.0 for step in steps)
                finished = steps[-1].finish_reason == "stop"
            return Sample(ids, logprobs, finished)

        return list(await asyncio.gather(*(one(index) for index in range(len(prompts)))))

    def close(self) -> None:
        self._loop.run(self._engine.close())
        self._loop.close()


class BatchGenerator:
    """A pinned model's rollouts decoded as static batches (all prompts at once, in chunks of
    ``max_batch_size``) by `Decoder` over its live weights; a LoRA policy's adapter is merged
    into a copy gathered once per call. Each sequence's tokens depend on its prompt, the
    weights and its seed alone, and are the torch engine's for that seed (up to float rounding
    between the two forwards). Folders not pinned, models the decoder does not reproduce
    exactly (`decoder.unsupported_reason`) and value-guided requests go to the torch engine.

    ``report`` (a job's event log) is told once per pinned model which path its rollouts
    take, and why when it is not the decoder."""

    def __init__(self, *, max_batch_size: int, device: str = "cpu",
                 report: Callable[[str], None] | None = None) -> None:
        self._max_batch, self._device = max(max_batch_size, 1), device
        self._report = report or (lambda message: None)
        self._pinned: dict[str, Any] = {}
        self._refusals: dict[str, str | None] = {}
        """Per folder, why the decoder refused its model (None: it took it); checked, logged
        and reported once per pinned model, not each step."""
        self._fallback: LocalGenerator | None = None

    def pin(self, folder: str | Path, model: Any) -> None:
        """Serve ``model`` (in memory) as the folder ``folder``; its weights are read at
        every `generate`, on the model's own device."""
        if self._pinned.get(str(folder)) is not model:
            self._refusals.pop(str(folder), None)
        self._pinned[str(folder)] = model
        if self._fallback is not None:
            self._fallback.pin(folder, model)

    def refresh(self) -> None:
        """Nothing to push: every `generate` reads the pinned model's weights as they are."""

    def generate(self, folder: str | Path, prompts: Sequence[list[int]],
                 options: Sequence[SamplingOptions]) -> list[Sample]:
        """One sample per prompt (token ids) with its options, in order."""
        with torch.inference_mode():
            decoder = self._decoder(str(folder), options)
            if decoder is None:
                return self._torch_engine().generate(folder, prompts, options)
            samples: list[Sample] = []
            for start in range(0, len(prompts), self._max_batch):
                chunk = slice(start, start + self._max_batch)
                samples.extend(Sample(*decoded) for decoded in
                               decode_static_batch(decoder, prompts[chunk], options[chunk]))
            return samples

    def _decoder(self, folder: str, options: Sequence[SamplingOptions]) -> Decoder | None:
        model = self._pinned.get(folder)
        if model is None or self._refusals.get(folder) or any(o.value_guidance
                                                              for o in options):
            return None
        try:
            decoder = Decoder.of(model)
        except Unsupported as refusal:
            self._tell(folder, str(refusal))
            return None
        if folder not in self._refusals:
            self._tell(folder, None)
        return decoder

    def _tell(self, folder: str, refusal: str | None) -> None:
        """Record which path ``folder``'s rollouts take, and say so once."""
        self._refusals[folder] = refusal
        if refusal is None:
            model = self._pinned[folder]
            base = model.get_base_model() if hasattr(model, "get_base_model") else model
            self._report(f"rollouts: the fast batch decoder ({type(base).__name__})")
            return
        log.info("rollouts of %s use the torch engine: %s", folder, refusal)
        self._report(f"rollouts use the torch engine: {refusal}")

    def _torch_engine(self) -> LocalGenerator:
        if self._fallback is None:
            self._fallback = LocalGenerator(max_batch_size=self._max_batch, device=self._device)
            for folder, model in self._pinned.items():
                self._fallback.pin(folder, model)
        return self._fallback

    def close(self) -> None:
        if self._fallback is not None:
            self._fallback.close()


class VllmGenerator:
    """vLLM's `LLM` over one model folder, in this process (its engine core too, so weights
    can be pushed into it without a copy across processes)."""

    def __init__(self, folder: str | Path, *, gpu_memory_utilization: float = 0.3,
                 kv_cache_gib: float | None = None, seed: int = 0) -> None:
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # read by vLLM when it starts
        from vllm import LLM
        from vllm.platforms import current_platform

        on_cpu = current_platform.is_cpu()
        kv_bytes = None if kv_cache_gib is None else int(kv_cache_gib * 2**30)
        self.folder = str(folder)
        self._llm = LLM(model=self.folder, tokenizer=self.folder, dtype="float32",
                        gpu_memory_utilization=gpu_memory_utilization,
                        kv_cache_memory_bytes=kv_bytes, enforce_eager=on_cpu,
                        distributed_executor_backend="uni" if on_cpu else None,
                        logprobs_mode="raw_logprobs", disable_log_stats=True, seed=seed)
        self._live: Any = None

    def pin(self, folder: str | Path, model: Any) -> None:
        if str(folder) != self.folder:
            raise ValueError(f"this vLLM engine serves {self.folder}, not {folder}")
        self._live = model

    def refresh(self) -> None:
        """Push the pinned model's weights (LoRA merged) into the engine: a reload of every
        tensor, about 0.05 s for the demo model on CPU."""
        if self._live is None:
            return
        weights = list(checkpoint_weights(self._live))
        self._llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights,
                                                           "is_checkpoint_format": True})

    def generate(self, folder: str | Path, prompts: Sequence[list[int]],
                 options: Sequence[SamplingOptions]) -> list[Sample]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        from inference.engines.vllm_engine import UNSAMPLED_BIAS

        vocab = self._llm.llm_engine.model_config.get_vocab_size()
        params = [SamplingParams(temperature=o.temperature, top_p=o.top_p, top_k=o.top_k,
                                 seed=o.seed, max_tokens=o.max_tokens, logprobs=0,
                                 stop_token_ids=list(o.stop_token_ids), detokenize=False,
                                 logit_bias={token: UNSAMPLED_BIAS for token in
                                             range(o.vocab_limit or vocab, vocab)} or None)
                  for o in options]
        outputs = self._llm.generate([TokensPrompt(prompt_token_ids=list(p)) for p in prompts],
                                     params, use_tqdm=False)
        samples = []
        for output in outputs:
            completion = output.outputs[0]
            ids = list(completion.token_ids)
            logprobs = [entry[token].logprob if entry else 0.0
                        for entry, token in zip(completion.logprobs or [], ids, strict=True)]
            samples.append(Sample(ids, logprobs, completion.finish_reason == "stop"))
        return samples

    def close(self) -> None:
        self._llm.llm_engine.engine_core.shutdown()  # type: ignore[attr-defined]


def checkpoint_weights(model: Any) -> Iterator[tuple[str, Any]]:
    """(name, tensor) of ``model`` as its checkpoint names them: a plain transformers model's
    state dict, or a peft model's base weights with each LoRA layer's update added in
    (W + scale·BA, computed apart: the trained weights are left untouched)."""
    from peft import PeftModel
    from peft.tuners.lora import LoraLayer

    if not isinstance(model, PeftModel):
        yield from model.state_dict().items()
        return
    base = model.get_base_model()
    merged = {f"{name}.weight": module for name, module in base.named_modules()
              if isinstance(module, LoraLayer)}
    for name, tensor in base.state_dict().items():
        if ".lora_" in name:
            continue
        plain = name.replace(".base_layer.", ".")
        if plain in merged:
            layer = merged[plain]
            tensor = tensor + sum(layer.get_delta_weight(a)  # type: ignore[attr-defined]
                                  for a in layer.active_adapters)
        yield plain, tensor
