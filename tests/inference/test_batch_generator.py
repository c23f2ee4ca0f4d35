"""`BatchGenerator`: a pinned model's rollouts as one static batch, token for token the torch
engine's for the same seeds — the demo Llama and the real families (Qwen2, Llama 3, Mistral,
Gemma), LoRA policies over them — reproducible per sequence seed whatever the batch, with the
model's own log-probabilities; other models (GPT-2) go to the torch engine, and the caller is
told once which path a model's rollouts take."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from inference.local import BatchGenerator, LocalGenerator, Sample, SamplingOptions
from tests.decoded_families import DECODED, family_model, lora_over
from trainer.demo_world.model import build_model
from trainer.demo_world.tokenizer import build_tokenizer

PROMPTS = [[1, 20, 21, 22, 23, 24], [1, 30, 31], [1, 40, 41, 42, 43], [1, 50]]
GPT2_REFUSAL = ("GPT2LMHeadModel is not one of the architectures the batch decoder reproduces "
                "(LlamaForCausalLM, Qwen2ForCausalLM, MistralForCausalLM, GemmaForCausalLM)")


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo Llama with larger random weights (peaked logits), saved with its tokenizer."""
    path = tmp_path_factory.mktemp("peaked-llama")
    build_tokenizer().save_pretrained(path)
    build_model(build_tokenizer(), seed=1, initializer_range=0.3).save_pretrained(path)
    return path


@pytest.fixture
def model(folder: Path) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()


@pytest.fixture
def batch(folder: Path, model: Any) -> Iterator[BatchGenerator]:
    generator = BatchGenerator(max_batch_size=64)
    generator.pin(folder, model)
    yield generator
    generator.close()


def options(seed: int, **overrides: Any) -> SamplingOptions:
    return SamplingOptions(**{"max_tokens": 10, "temperature": 1.0, "seed": seed,
                              "logprobs": 0, **overrides})


def model_logprobs(model: Any, prompt: list[int], sample: Sample) -> list[float]:
    """log p of each sampled id under ``model``'s own distribution, from one forward."""
    ids = torch.tensor([prompt + sample.token_ids])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, len(prompt) - 1:-1]  # (T, V)
    return torch.log_softmax(logits, -1).gather(
        -1, torch.tensor(sample.token_ids)[:, None])[:, 0].tolist()


@pytest.mark.parametrize("wanted", [
    [options(0, temperature=0.0, max_tokens=n) for n in (12, 5, 9, 1)],
    [options(1, max_tokens=12), options(2, temperature=0.7, top_k=5, max_tokens=5),
     options(3, top_p=0.8, max_tokens=9), options(4, temperature=0.0, max_tokens=1)],
    [options(10 + i, temperature=1.3, stop_token_ids=(2, 97)) for i in range(4)],
], ids=["greedy", "mixed", "sampled"])
def test_rollouts_are_the_torch_engines_token_for_token(folder: Path, model: Any,
                                                        batch: BatchGenerator,
                                                        wanted: list[SamplingOptions]) -> None:
    engine = LocalGenerator(max_batch_size=64)
    engine.pin(folder, model)
    try:
        expected = engine.generate(folder, PROMPTS, wanted)
    finally:
        engine.close()
    ours = batch.generate(folder, PROMPTS, wanted)
    assert [s.token_ids for s in ours] == [s.token_ids for s in expected]
    assert [s.finished for s in ours] == [s.finished for s in expected]
    for mine, theirs in zip(ours, expected, strict=True):
        assert mine.logprobs == pytest.approx(theirs.logprobs, abs=1e-4)
    if wanted[0].stop_token_ids == ():  # no stop ids: max_tokens each
        assert [len(s.token_ids) for s in ours] == [o.max_tokens for o in wanted]


def test_a_sequence_depends_on_its_prompt_and_seed_alone(folder: Path, model: Any,
                                                         batch: BatchGenerator) -> None:
    mixed = [options(7), options(8, temperature=0.7, top_k=5), options(9, top_p=0.8),
             options(10, temperature=0.0, max_tokens=3)]
    together = batch.generate(folder, PROMPTS, mixed)
    assert batch.generate(folder, PROMPTS, mixed) == together
    alone = [batch.generate(folder, [prompt], [option])[0]
             for prompt, option in zip(PROMPTS, mixed, strict=True)]
    assert [s.token_ids for s in alone] == [s.token_ids for s in together]
    reordered = batch.generate(folder, PROMPTS[::-1] + PROMPTS[:1],
                               mixed[::-1] + [options(11)])
    assert [s.token_ids for s in reordered[:4]] == [s.token_ids for s in together[::-1]]
    # A prompt given twice is prefilled once; each of its rows still decodes on its own.
    assert reordered[4].token_ids == batch.generate(folder, PROMPTS[:1],
                                                    [options(11)])[0].token_ids
    assert reordered[4].token_ids != reordered[3].token_ids
    chunked = BatchGenerator(max_batch_size=3)
    chunked.pin(folder, model)
    assert [s.token_ids for s in chunked.generate(folder, PROMPTS, mixed)] == [
        s.token_ids for s in together]
    reseeded = batch.generate(folder, PROMPTS, [options(100 + i) for i in range(4)])
    assert [s.token_ids for s in reseeded] != [s.token_ids for s in together]


def test_logprobs_are_the_models_own_at_the_sampled_tokens(folder: Path, model: Any,
                                                           batch: BatchGenerator) -> None:
    # Temperature and cuts change what is drawn, not the log-probabilities reported.
    wanted = [options(1, temperature=1.5), options(2, top_k=3), options(3, top_p=0.5),
              options(4, temperature=0.0)]
    for prompt, sample in zip(PROMPTS, batch.generate(folder, PROMPTS, wanted), strict=True):
        assert sample.logprobs == pytest.approx(model_logprobs(model, prompt, sample), abs=1e-4)


def test_draws_follow_the_processed_distribution(folder: Path, model: Any,
                                                 batch: BatchGenerator) -> None:
    rows = 2000
    samples = batch.generate(folder, [PROMPTS[0]] * rows,
                             [options(seed, max_tokens=1, temperature=0.8, top_k=4)
                              for seed in range(rows)])
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([PROMPTS[0]])).logits[0, -1]
    top = torch.topk(logits, 4)
    expected = dict(zip(top.indices.tolist(), torch.softmax(top.values / 0.8, -1).tolist()))
    counts = Counter(s.token_ids[0] for s in samples)
    assert set(counts) <= set(expected)  # never outside the top 4
    distance = sum(abs(counts[token] / rows - p) for token, p in expected.items()) / 2
    assert distance < 0.05  # total variation; about 0.01 is expected at 2,000 draws


def test_a_row_ends_at_its_first_stop_token_or_at_max_tokens(folder: Path,
                                                             batch: BatchGenerator) -> None:
    free = batch.generate(folder, PROMPTS, [options(5 + i, max_tokens=8) for i in range(4)])
    assert all(len(s.token_ids) == 8 and not s.finished for s in free)
    stop = free[0].token_ids[3]  # row 0's fourth token, first seen at index first
    first = free[0].token_ids.index(stop)
    stopped = batch.generate(folder, PROMPTS, [options(5 + i, max_tokens=8,
                                                       stop_token_ids=(stop, 97))
                                               for i in range(4)])
    assert stopped[0].token_ids == free[0].token_ids[:first + 1]
    assert stopped[0].finished
    for before, after in zip(free, stopped, strict=True):  # every row, the same way
        if stop in before.token_ids:
            assert after.token_ids == before.token_ids[:before.token_ids.index(stop) + 1]
        else:
            assert (after.token_ids, after.finished) == (before.token_ids, False)
    late = batch.generate(folder, PROMPTS[:1], [options(5, max_tokens=8, min_tokens=first + 2,
                                                        stop_token_ids=(stop,))])[0]
    assert len(late.token_ids) >= first + 2
    assert stop not in late.token_ids[:first + 1]


def test_a_live_update_is_seen_by_the_next_call(folder: Path, model: Any,
                                                batch: BatchGenerator) -> None:
    wanted = [options(i) for i in range(4)]
    before = batch.generate(folder, PROMPTS, wanted)
    with torch.no_grad():
        model.lm_head.weight.mul_(-1.0)
    batch.refresh()
    after = batch.generate(folder, PROMPTS, wanted)
    assert [s.token_ids for s in after] != [s.token_ids for s in before]
    for prompt, sample in zip(PROMPTS, after, strict=True):
        assert sample.logprobs == pytest.approx(model_logprobs(model, prompt, sample), abs=1e-4)


def engine_and_ours(folder: Path, model: Any, prompts: list[list[int]],
                    wanted: list[SamplingOptions]) -> tuple[list[Sample], list[Sample], list[str]]:
    """The torch engine's samples, `BatchGenerator`'s (generating twice) and what it reported."""
    reported: list[str] = []
    engine = LocalGenerator(max_batch_size=8)
    ours = BatchGenerator(max_batch_size=8, report=reported.append)
    try:
        engine.pin(folder, model)
        ours.pin(folder, model)
        expected = engine.generate(folder, prompts, wanted)
        mine = ours.generate(folder, prompts, wanted)
        ours.pin(folder, model)  # the sampler pins the same live model again: no new report
        again = ours.generate(folder, prompts, wanted)
        assert [s.token_ids for s in again] == [s.token_ids for s in mine]
    finally:
        engine.close()
        ours.close()
    return mine, expected, reported


@pytest.mark.parametrize("name", [*DECODED, *(f"{family}-lora" for family in DECODED)])
def test_each_familys_rollouts_are_the_torch_engines_token_for_token(
        name: str, family_models: dict[str, Path]) -> None:
    family = name.removesuffix("-lora")
    model = family_model(family_models[family])
    architecture = type(model).__name__
    if name.endswith("-lora"):
        model = lora_over(model)  # peft's default targets: q_proj and v_proj
    wanted = [options(1, max_tokens=8), options(2, temperature=0.7, top_k=5, max_tokens=5),
              options(3, top_p=0.8, max_tokens=8, stop_token_ids=(2, 97)),
              options(4, temperature=0.0, max_tokens=6)]
    ours, expected, reported = engine_and_ours(family_models[family], model, PROMPTS, wanted)
    assert [s.token_ids for s in ours] == [s.token_ids for s in expected]
    assert [s.finished for s in ours] == [s.finished for s in expected]
    for mine, theirs in zip(ours, expected, strict=True):
        assert mine.logprobs == pytest.approx(theirs.logprobs, abs=1e-4)
    assert reported == [f"rollouts: the fast batch decoder ({architecture})"]


def test_a_model_it_does_not_reproduce_goes_to_the_torch_engine(
        family_models: dict[str, Path]) -> None:
    gpt2 = family_model(family_models["gpt2"])
    wanted = [options(i, stop_token_ids=(0,)) for i in range(4)]
    # The decoder cannot run a GPT-2: samples, the engine's, mean the fallback ran.
    ours, expected, reported = engine_and_ours(family_models["gpt2"], gpt2, PROMPTS, wanted)
    assert [s.token_ids for s in ours] == [s.token_ids for s in expected]
    for one, other in zip(ours, expected, strict=True):
        assert one.logprobs == pytest.approx(other.logprobs, abs=1e-5)
    assert reported == [f"rollouts use the torch engine: {GPT2_REFUSAL}"]


@pytest.mark.parametrize("generator_class", [BatchGenerator, LocalGenerator])
def test_rollouts_never_draw_a_padded_vocabularys_ids(generator_class: Any,
                                                      family_models: dict[str, Path]) -> None:
    """Qwen2's embedding has rows past its tokenizer's ids, which decode to nothing. With the
    padded rows made the likeliest (every real id's logit 0, the padded ones' large), a
    rollout limited to the tokenizer's ids never draws one; unlimited, it does."""
    from transformers import AutoTokenizer

    folder = family_models["qwen2"]
    size = len(AutoTokenizer.from_pretrained(folder))
    model = family_model(folder)
    assert model.config.vocab_size > size
    with torch.no_grad():
        head = model.get_output_embeddings().weight
        head[:size] = 0.0
        head[size:] *= 10.0
    generator = generator_class(max_batch_size=64)
    generator.pin(folder, model)
    try:
        wanted = [options(30 + i, max_tokens=16) for i in range(4)]
        free = generator.generate(folder, PROMPTS, wanted)
        limited = generator.generate(folder, PROMPTS, [
            options(30 + i, max_tokens=16, vocab_limit=size) for i in range(4)])
    finally:
        generator.close()
    assert any(token >= size for sample in free for token in sample.token_ids)
    assert all(token < size for sample in limited for token in sample.token_ids)
