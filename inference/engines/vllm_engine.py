"""The vLLM engine: each base model decoded by its own in-process `AsyncLLM`.

One `AsyncLLM` per base-model folder, started on the first request for it and kept in a small
least-recently-used set. LoRA adapters ride on their base's engine as `LoRARequest`s (vLLM
batches several adapters with the base in one step), so an adapter costs no second copy of
the weights. Prompts go in as token ids and tokens come out as ids with their log-probabilities:
detokenising, stop strings and OpenAI shapes stay in `inference.serving`, as for every engine.

vLLM runs its engine core in a child process it spawns (`AsyncLLM` always does); on CPU we ask
it to load the model in that same child (the "uni" executor) rather than in a further worker
process, which halves start-up time and keeps one process per served base model.

Value Augmented Sampling runs inside vLLM as a logits processor (`inference.engines.vllm_vas`)
registered on every engine: a guided request carries its value-model folders, betas and k in
`SamplingParams.extra_args`, and the processor, in the engine-core process, steers those rows
only. vLLM's V2 model runner (the default on a GPU with Triton) refuses such processors, so an
engine with value guidance on runs the V1 runner (VLLM_USE_V2_MODEL_RUNNER=0).
"""

from __future__ import annotations

import asyncio
import itertools
import os
from collections import OrderedDict
from collections.abc import AsyncGenerator, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal

from inference.catalog import VALUE_MODEL, ModelCatalog, ResolvedModels, ServedModel
from inference.engines.base import GenerationRequest, SamplingOptions, TokenStep
from inference.vas import DEFAULT_TOP_K
from services.errors import InvalidRequest

if TYPE_CHECKING:
    from vllm import SamplingParams
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.lora.request import LoRARequest
    from vllm.outputs import CompletionOutput
    from vllm.v1.engine.async_llm import AsyncLLM


@dataclass(frozen=True)
class VllmSettings:
    """How each base model's `AsyncLLM` is started."""

    gpu_memory_utilization: float = 0.5
    """Fraction of GPU memory one engine takes; on CPU, of RAM, unless kv_cache_gib is set."""
    kv_cache_gib: float | None = None
    """KV cache size per engine in GiB (recommended on CPU); None sizes it from the fraction."""
    max_model_len: int | None = None
    """Context length; None takes the model's max_position_embeddings."""
    max_loaded_models: int = 2
    """Base models with a running engine; the least recently used one is shut down first."""
    enable_lora: bool = True
    max_lora_rank: int = 16
    """Largest adapter rank served (vLLM accepts 1, 8, 16, 32, 64, 128, 256, 320, 512)."""
    max_loras: int = 4
    """Distinct adapters decoded in one batch."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "float32"
    """As InferenceSettings.dtype; "auto" would run a float32 checkpoint in bfloat16/float16."""
    enforce_eager: bool | None = None
    """No CUDA graphs or torch.compile; None: eager on CPU (compiling there takes minutes)."""
    logprobs_mode: Literal["raw_logprobs", "processed_logprobs"] = "raw_logprobs"
    """raw_logprobs: log-probabilities of the model's own distribution, before temperature and
    top-k/top-p, as the torch engine reports them."""
    value_guidance: bool = True
    """Serve `value_guidance` (VAS) through vLLM's logits processors. This registers the
    processor on every engine and, on a GPU, runs vLLM's V1 model runner rather than V2
    (VLLM_USE_V2_MODEL_RUNNER=0); False keeps V2 and refuses guided requests."""


@dataclass
class _Loaded:
    """One base model's running engine, and the adapters it has already loaded."""

    llm: AsyncLLM
    active: int = 0
    idle: asyncio.Event = field(default_factory=asyncio.Event)
    adapters: set[int] = field(default_factory=set)

    def enter(self) -> None:
        self.active += 1
        self.idle.clear()

    def leave(self) -> None:
        self.active -= 1
        if self.active == 0:
            self.idle.set()


class VllmEngine:
    name = "vllm"

    def __init__(self, catalog: ModelCatalog, settings: VllmSettings | None = None,
                 **overrides: Any):
        self._registry = ResolvedModels(catalog)
        self._settings = replace(settings or VllmSettings(), **overrides)
        self._engines: OrderedDict[str, _Loaded] = OrderedDict()
        self._starting = asyncio.Lock()
        self._adapter_ids: dict[tuple[str, str], int] = {}
        self._request_numbers = itertools.count()
        self._waiting = 0
        self._running = 0

    # -- the Engine protocol ----------------------------------------------------------------

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[list[TokenStep], None]:
        if request.options.value_guidance and not self._settings.value_guidance:
            raise InvalidRequest("value_guidance is turned off on this vLLM engine "
                                 "(VllmSettings.value_guidance); run the inference service "
                                 "with it on, or with ALIGND_ENGINE=torch", param="value_guidance",
                                 code="unsupported_on_engine")
        served = await self._registry.resolve(request.model)
        value_folders = [(await self._registry.resolve(  # the engine core loads them by path
            guide.model, param=f"value_guidance[{i}].model", kinds=(VALUE_MODEL,))).path
            for i, guide in enumerate(request.options.value_guidance)]
        self._waiting += 1
        started = False
        try:
            loaded = await self._acquire(served.base_path if served.is_adapter else served.path)
            try:
                async with aclosing(self._stream(loaded, served, request,
                                                 value_folders)) as steps:
                    async for new in steps:
                        if not started:
                            started = True
                            self._waiting, self._running = self._waiting - 1, self._running + 1
                        yield new
            finally:
                loaded.leave()
        finally:
            if started:
                self._running -= 1
            else:
                self._waiting -= 1

    def queue_depth(self) -> int:
        """Requests without a token yet: waiting for their model's engine, queued in vLLM, or
        in their prefill."""
        return self._waiting

    def running(self) -> int:
        return self._running

    async def close(self) -> None:
        async with self._starting:
            while self._engines:
                _, loaded = self._engines.popitem(last=False)
                await shutdown(loaded.llm)

    # -- engines, one per base model --------------------------------------------------------

    async def _acquire(self, folder: str) -> _Loaded:
        """The running engine of ``folder`` (started if needed), counted as in use."""
        loaded = self._engines.get(folder)
        if loaded is None or loaded.llm.errored:
            async with self._starting:
                loaded = self._engines.get(folder)
                if loaded is not None and loaded.llm.errored:  # its core died: start anew
                    del self._engines[folder]
                    await shutdown(loaded.llm)
                    loaded = None
                if loaded is None:
                    await self._make_room()
                    # Through a box: vLLM's first start keeps a traceback of a failed import,
                    # and with it the calling frames; a frame holding the engine would keep
                    # it alive after shutdown.
                    box: list[AsyncLLM] = []
                    await asyncio.to_thread(
                        lambda: box.append(start_async_llm(folder, self._settings)))
                    loaded = self._engines[folder] = _Loaded(box.pop())
        self._engines.move_to_end(folder)
        loaded.enter()
        return loaded

    async def _make_room(self) -> None:
        """Shut engines down, least recently used first, until one more fits; an engine still
        streaming is shut down once its requests finish."""
        while len(self._engines) >= self._settings.max_loaded_models:
            _, victim = self._engines.popitem(last=False)
            if victim.active:
                await victim.idle.wait()
            await shutdown(victim.llm)

    async def _stream(self, loaded: _Loaded, served: ServedModel, request: GenerationRequest,
                      value_folders: list[str]) -> AsyncGenerator[list[TokenStep], None]:
        from vllm.exceptions import VLLMValidationError
        from vllm.inputs import TokensPrompt

        lora = await self._adapter(loaded, served) if served.is_adapter else None
        # Our own id per call: the serving layer may reuse its request id for the n choices.
        vllm_id = f"{request.request_id}-{next(self._request_numbers)}"
        prompt = TokensPrompt(prompt_token_ids=list(request.prompt_ids))
        params = sampling_params(request.options, value_folders,
                                 model_vocab=loaded.llm.model_config.get_vocab_size())
        stream = loaded.llm.generate(prompt, params, vllm_id, lora_request=lora)
        finished = False
        try:
            async for output in stream:
                steps = token_steps(output.outputs[0], request.options.logprobs)
                if steps:
                    finished = steps[-1].finish_reason is not None
                    yield steps
        except VLLMValidationError as exc:
            raise InvalidRequest(str(exc), param=getattr(exc, "parameter", None)) from exc
        finally:
            if not finished:  # the consumer closed the stream early: free the slot now
                await loaded.llm.abort(vllm_id)
            await stream.aclose()

    async def _adapter(self, loaded: _Loaded, served: ServedModel) -> LoRARequest:
        """The adapter's `LoRARequest`, loaded into the engine once, so that a broken adapter
        fails its request here instead of inside the engine core."""
        from vllm.lora.request import LoRARequest

        if not self._settings.enable_lora:
            raise InvalidRequest(f"model {served.id!r} is a LoRA adapter and this vLLM engine "
                                 "runs with LoRA disabled", param="model",
                                 code="unsupported_on_engine")
        if loaded.llm.vllm_config.lora_config is None:
            architecture = loaded.llm.model_config.architecture
            raise InvalidRequest(f"model {served.id!r} is a LoRA adapter over a {architecture}, "
                                 "which vLLM serves without LoRA; serve it with "
                                 "ALIGND_ENGINE=torch, or merge the adapter into its base",
                                 param="model", code="unsupported_on_engine")
        number = self._adapter_ids.setdefault((served.id, served.path),
                                              len(self._adapter_ids) + 1)
        lora = LoRARequest(lora_name=served.id, lora_int_id=number, lora_path=served.path)
        if number not in loaded.adapters:
            try:
                await loaded.llm.add_lora(lora)
            except Exception as exc:
                raise InvalidRequest(f"LoRA adapter {served.id!r} could not be loaded on its "
                                     f"base model: {exc}", param="model",
                                     code="adapter_load_failed") from exc
            loaded.adapters.add(number)
        return lora


def start_async_llm(folder: str, settings: VllmSettings) -> AsyncLLM:
    """Start vLLM's engine for one base-model folder (blocking: tens of seconds on CPU)."""
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.platforms import current_platform
    from vllm.v1.engine.async_llm import AsyncLLM

    on_cpu = current_platform.is_cpu()
    if on_cpu:
        # vLLM's CPU platform replaces the "uni" executor by a worker process unless this is
        # 0; AsyncLLM still runs its engine core in a child process of its own either way.
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    processors: list[str] = []
    if settings.value_guidance:
        from inference.engines.vllm_vas import PROCESSOR

        # The V2 model runner rejects V1 logits processors; read here and in the child.
        os.environ["VLLM_USE_V2_MODEL_RUNNER"] = "0"
        processors.append(PROCESSOR)
    kv_bytes = None if settings.kv_cache_gib is None else int(settings.kv_cache_gib * 2**30)
    args = AsyncEngineArgs(
        model=folder, tokenizer=folder, dtype=settings.dtype,
        max_model_len=settings.max_model_len,  # type: ignore[arg-type]  # None: from config
        gpu_memory_utilization=settings.gpu_memory_utilization, kv_cache_memory_bytes=kv_bytes,
        enforce_eager=on_cpu if settings.enforce_eager is None else settings.enforce_eager,
        enable_lora=settings.enable_lora, max_lora_rank=settings.max_lora_rank,  # type: ignore[arg-type]
        max_loras=settings.max_loras,
        distributed_executor_backend="uni" if on_cpu else None,
        logprobs_mode=settings.logprobs_mode,
        logits_processors=processors,  # type: ignore[arg-type]
        disable_log_stats=True,
    )
    if args.enable_lora and not serves_lora(args):
        args.enable_lora = False  # else the core fails to start, and the model is not served
    return AsyncLLM.from_engine_args(args)


def serves_lora(args: AsyncEngineArgs) -> bool:
    """Whether vLLM has LoRA layers for the model's architecture (most, not GPT-2's)."""
    from vllm.model_executor.models import ModelRegistry
    from vllm.model_executor.models.interfaces import supports_lora

    model_config = args.create_model_config()
    model_class, _ = ModelRegistry.resolve_model_cls(model_config.architectures, model_config)
    return supports_lora(model_class)


async def shutdown(llm: AsyncLLM) -> None:
    """Stop an engine without blocking the event loop for the seconds its core takes to exit."""
    if llm.output_handler is not None:
        # First, or it would see the core go away and log that as an engine failure.
        llm.output_handler.cancel()
    await asyncio.to_thread(llm.shutdown)


UNSAMPLED_BIAS = -100.0
"""The logit bias that keeps a padded vocabulary's rows from being sampled: vLLM's strongest
(it clamps biases to [-100, 100]), e^100 times less likely than before."""


def sampling_params(options: SamplingOptions, value_folders: Sequence[str] = (),
                    model_vocab: int | None = None) -> SamplingParams:
    """vLLM's parameters for one sequence; token ids out (no text), one delta per step.

    ``value_folders`` are the folders of ``options.value_guidance``'s models, in order;
    ``model_vocab`` the model's vocabulary size, whose ids past ``options.vocab_limit`` are
    biased away (vLLM samples any id of the model's, tokenizer or not).
    """
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind

    top_k, extra_args = options.top_k, None
    if options.value_guidance:
        from inference.engines.vllm_vas import VasArgs

        # k candidates; vLLM's own top-k cut then keeps exactly the candidates VAS left.
        top_k = options.top_k or DEFAULT_TOP_K
        betas = tuple(guide.beta for guide in options.value_guidance)
        extra_args = VasArgs(tuple(value_folders), betas, top_k).extra_args()
    limit = options.vocab_limit
    padding = (range(limit, model_vocab) if limit is not None and model_vocab is not None
               else range(0))
    # temperature 0 is greedy in vLLM too, and top_k 0 means no cut in both.
    return SamplingParams(temperature=options.temperature, top_p=options.top_p,
                          top_k=top_k, seed=options.seed, max_tokens=options.max_tokens,
                          logprobs=options.logprobs, stop_token_ids=list(options.stop_token_ids),
                          ignore_eos=options.ignore_eos,  # else vLLM stops at the eos itself
                          min_tokens=options.min_tokens,
                          logit_bias={token: UNSAMPLED_BIAS for token in padding} or None,
                          detokenize=False, output_kind=RequestOutputKind.DELTA,
                          extra_args=extra_args)


def token_steps(completion: CompletionOutput, wanted: int | None) -> list[TokenStep]:
    """One `TokenStep` per token in a delta output; the finish reason goes on the last."""
    tokens = list(completion.token_ids)
    reason = completion.finish_reason
    if reason is not None and reason not in ("stop", "length"):
        raise RuntimeError(f"vLLM ended the sequence with finish reason {reason!r}")
    if reason is not None and not tokens:
        raise RuntimeError("vLLM finished a sequence in an output without a token")
    steps = []
    for position, token in enumerate(tokens):
        finish = reason if position == len(tokens) - 1 else None
        if wanted is None or completion.logprobs is None:
            steps.append(TokenStep(token_id=token, finish_reason=finish))  # type: ignore[arg-type]
            continue
        # The sampled token is always present; the others are ranked 1..wanted.
        entries = completion.logprobs[position]
        steps.append(TokenStep(token_id=token, logprob=entries[token].logprob,
                               top_logprobs={tid: lp.logprob for tid, lp in entries.items()
                                             if lp.rank is not None and lp.rank <= wanted},
                               finish_reason=finish))  # type: ignore[arg-type]
    return steps
