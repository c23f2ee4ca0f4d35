"""Value Augmented Sampling on the vLLM engine (`inference.engines.vllm_vas`, a logits processor
in vLLM's engine core), checked against vLLM's own top-k sampling, a full-recompute reference,
the torch engine, and the exact guided distribution; and the processor's row bookkeeping,
driven directly with the `BatchUpdate`s vLLM's input batch sends."""

from __future__ import annotations

import asyncio
import math
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForTokenClassification, AutoTokenizer

from inference.catalog import ModelCatalog
from inference.engines.base import GenerationRequest, SamplingOptions, ValueGuide
from inference.vas import candidates, guided_logits
from services.db.engine import session_factory
from services.errors import InvalidRequest
from tests.inference.conftest import InferenceWorld, Run
from tests.inference.test_vas_and_best_of_n import PROMPT, _reference_vas_greedy
from tests.inference.test_vllm_engine import collect, tokens

SAMPLES = 300
"""First tokens drawn per engine in the distribution test."""
FAILURE_ODDS = 1e-6
"""How often the distribution test may fail on a correct engine (its bound's δ)."""


@pytest.fixture(scope="module")
def catalog(database_url: str) -> ModelCatalog:
    return ModelCatalog(session_factory(database_url))


@pytest.fixture(scope="module")
def vllm(loop: asyncio.AbstractEventLoop, catalog: ModelCatalog) -> Iterator[Any]:
    from inference.engines.vllm_engine import VllmEngine

    engine = VllmEngine(catalog, kv_cache_gib=0.25, enable_lora=False, max_loaded_models=1)
    yield engine
    loop.run_until_complete(engine.close())


@pytest.fixture(scope="module")
def torch_engine(loop: asyncio.AbstractEventLoop, catalog: ModelCatalog) -> Iterator[Any]:
    from inference.engines.torch_engine import TorchEngine

    engine = TorchEngine(catalog, device="cpu")
    yield engine
    loop.run_until_complete(engine.close())


@pytest.fixture(scope="module")
def prompt_ids(inference_world: InferenceWorld) -> list[int]:
    return AutoTokenizer.from_pretrained(inference_world.base_path)(PROMPT)["input_ids"]


@pytest.fixture(scope="module")
def eos(catalog: ModelCatalog, inference_world: InferenceWorld) -> tuple[int, ...]:
    """Stop tokens as `inference.serving` passes them, so both engines stop alike."""
    return catalog.eos_token_ids(catalog.resolve(inference_world.base, None))


def guided_request(world: InferenceWorld, prompt_ids: list[int], betas: Sequence[float] = (),
            **options: Any) -> GenerationRequest:
    guides = tuple(ValueGuide(model, beta) for model, beta in zip(world.values, betas))
    return GenerationRequest(request_id="vas", model=world.base, prompt_ids=prompt_ids,
                             options=SamplingOptions(**{"max_tokens": 12, **options,
                                                        "value_guidance": guides}))


async def collect_all(engine: Any, requests: Sequence[GenerationRequest]) -> list[list[int]]:
    """Every request's tokens, all submitted at once (so vLLM batches them)."""
    return [tokens(steps) for steps in
            await asyncio.gather(*(collect(engine, req) for req in requests))]


# -- through the engines ----------------------------------------------------------------------


def test_beta_zero_is_vllms_own_top_k_token_for_token(
        vllm: Any, run: Run[Any], inference_world: InferenceWorld,
        prompt_ids: list[int]) -> None:
    samples = []
    for seed in (1, 2, 3):
        plain = guided_request(inference_world, prompt_ids, top_k=5, seed=seed, max_tokens=16)
        guided = guided_request(inference_world, prompt_ids, (0.0, 0.0), top_k=5, seed=seed,
                         max_tokens=16)
        samples.append(tokens(run(collect(vllm, plain))))
        assert tokens(run(collect(vllm, guided))) == samples[-1]
    assert len({tuple(s) for s in samples}) > 1  # the seeds did sample different tokens


def test_greedy_vas_equals_the_full_recompute_and_the_torch_engine(
        vllm: Any, torch_engine: Any, run: Run[Any], inference_world: InferenceWorld,
        prompt_ids: list[int], eos: tuple[int, ...]) -> None:
    betas = [1.5, -0.7]
    guided = guided_request(inference_world, prompt_ids, betas, temperature=0.0, top_k=6,
                     stop_token_ids=eos)
    on_vllm = tokens(run(collect(vllm, guided)))
    assert on_vllm == tokens(run(collect(torch_engine, guided)))
    tokenizer = AutoTokenizer.from_pretrained(inference_world.base_path)
    expected = _reference_vas_greedy(inference_world, betas, k=6, steps=12)
    assert tokenizer.decode(on_vllm, skip_special_tokens=True) == expected
    plain = guided_request(inference_world, prompt_ids, temperature=0.0, stop_token_ids=eos)
    assert on_vllm != tokens(run(collect(vllm, plain)))  # the guidance did steer


def test_unguided_requests_batched_with_guided_ones_are_unaffected(
        vllm: Any, run: Run[Any], inference_world: InferenceWorld,
        prompt_ids: list[int]) -> None:
    plain = [guided_request(inference_world, prompt_ids, seed=11, max_tokens=16),
             guided_request(inference_world, prompt_ids, temperature=0.0, max_tokens=10)]
    alone = run(collect_all(vllm, plain))
    guided = [guided_request(inference_world, prompt_ids, (2.0, -1.0), seed=12, top_k=6,
                      max_tokens=16),
              guided_request(inference_world, prompt_ids, (1.5, -0.7), temperature=0.0, top_k=6)]
    together = run(collect_all(vllm, [guided[0], plain[0], guided[1], plain[1]]))
    assert [together[1], together[3]] == alone


@pytest.mark.parametrize("engine_fixture", ["vllm", "torch_engine"])
def test_guided_rows_keep_their_state_as_requests_join_and_leave(
        engine_fixture: str, request: pytest.FixtureRequest, run: Run[Any],
        inference_world: InferenceWorld, prompt_ids: list[int]) -> None:
    """Requests finishing at different steps make vLLM move the last rows into the freed
    ones, and the torch engine drop them from its batches; every value model scores all the
    rows it guides in one pass: every guided request must decode as it does alone."""
    engine = request.getfixturevalue(engine_fixture)
    other = AutoTokenizer.from_pretrained(inference_world.base_path)("3+99=")["input_ids"]
    requests = [
        guided_request(inference_world, prompt_ids, (1.5, -0.7), temperature=0.0, top_k=6,
                max_tokens=3),
        guided_request(inference_world, other, (0.0, 2.0), temperature=0.0, top_k=4, max_tokens=14),
        guided_request(inference_world, prompt_ids, temperature=0.0, max_tokens=5),
        guided_request(inference_world, other, (-1.0, 0.5), temperature=0.0, top_k=8, max_tokens=9),
        guided_request(inference_world, prompt_ids, (3.0, 0.0), temperature=0.0, top_k=5,
                max_tokens=2),
        guided_request(inference_world, other, (0.7, 0.7), temperature=0.0, top_k=6, max_tokens=12),
    ]
    alone = [run(collect_all(engine, [req]))[0] for req in requests]
    assert run(collect_all(engine, requests)) == alone


def _exact_first_token(world: InferenceWorld, prompt_ids: list[int], k: int,
                       beta: float) -> tuple[dict[int, float], dict[int, float]]:
    """The guided first-token distribution (value model 0, temperature 1) and plain top-k's."""
    base = AutoModelForCausalLM.from_pretrained(world.base_path).eval()
    value = AutoModelForTokenClassification.from_pretrained(world.value_paths[0]).eval()
    with torch.no_grad():
        logits = base(torch.tensor([prompt_ids])).logits[0, -1]  # (V,)
        candidate_ids = candidates(logits, k)  # (k,)
        rows = torch.cat([torch.tensor([prompt_ids]).repeat(k, 1),
                          candidate_ids.view(-1, 1)], dim=1)  # (k, T+1)
        values = value(rows).logits[:, -1, 0].unsqueeze(0)  # (1, k)
    steered = guided_logits(logits, candidate_ids, values, torch.tensor([beta]))
    guided = torch.softmax(steered, dim=-1)[candidate_ids]  # (k,)
    plain = torch.softmax(logits[candidate_ids], dim=-1)  # (k,)
    ids = candidate_ids.tolist()
    return dict(zip(ids, guided.tolist())), dict(zip(ids, plain.tolist()))


def _total_variation(p: dict[int, float], q: dict[int, float]) -> float:
    return 0.5 * sum(abs(p.get(t, 0.0) - q.get(t, 0.0)) for t in p.keys() | q.keys())


def test_sampled_first_tokens_follow_the_exact_guided_distribution_on_both_engines(
        vllm: Any, torch_engine: Any, run: Run[Any], inference_world: InferenceWorld,
        prompt_ids: list[int]) -> None:
    """β = 0.2 on value model 0, k = 6: the random value heads spread V over ~25 units, so a
    larger β collapses the distribution onto one token and would test only the argmax.

    Bound (Bretagnolle–Huber–Carol): for n draws from a distribution on k outcomes,
    P(‖p̂ − p‖₁ ≥ ε) ≤ (2^k − 2)·exp(−nε²/2). With n = 300, k = 6 and δ = 1e-6 that is
    total variation ≤ ε/2 ≈ 0.173 from the exact distribution per engine, ≤ 0.35 between
    the two; plain top-k is ≈ 0.46 from the guided distribution, so the test has power.
    """
    k, beta = 6, 0.2
    exact, plain = _exact_first_token(inference_world, prompt_ids, k, beta)
    bound = math.sqrt(2 * math.log((2**k - 2) / FAILURE_ODDS) / SAMPLES) / 2
    assert _total_variation(exact, plain) > 2 * bound

    requests = [guided_request(inference_world, prompt_ids, (beta,), max_tokens=1, temperature=1.0,
                        top_k=k, seed=seed) for seed in range(SAMPLES)]
    empirical = []
    for engine in (vllm, torch_engine):
        firsts = Counter(out[0] for out in run(collect_all(engine, requests)))
        assert set(firsts) <= set(exact)  # never outside the k candidates
        empirical.append({token: count / SAMPLES for token, count in firsts.items()})
    on_vllm, on_torch = empirical
    assert _total_variation(on_vllm, exact) <= bound, (on_vllm, exact)
    assert _total_variation(on_torch, exact) <= bound, (on_torch, exact)
    assert _total_variation(on_vllm, on_torch) <= 2 * bound


def test_malformed_guidance_is_refused_at_admission(inference_world: InferenceWorld) -> None:
    from vllm import SamplingParams

    from inference.engines.vllm_vas import VAS_KEY, ValueGuidedLogits

    good = {"value_models": [str(inference_world.value_paths[0])], "betas": [1.0], "k": 4}
    ValueGuidedLogits.validate_params(SamplingParams(extra_args={VAS_KEY: good}))
    ValueGuidedLogits.validate_params(SamplingParams())  # no guidance: nothing to check
    for bad, says in (({**good, "betas": [1.0, 2.0]}, "betas"), ({**good, "k": 0}, "k"),
                      ({**good, "value_models": []}, "value_models"), ("x", "object"),
                      ({**good, "value_models": ["/nowhere"]}, "config.json")):
        with pytest.raises(ValueError, match=says):
            ValueGuidedLogits.validate_params(SamplingParams(extra_args={VAS_KEY: bad}))


# -- the processor's row bookkeeping, without vLLM's engine ------------------------------------


class _Rows:
    """The processor driven as vLLM's input batch drives it, with greedy decoding on top and
    every row checked against VAS by full forward passes."""

    def __init__(self, world: InferenceWorld):
        from inference.engines.vllm_vas import ValueGuidedLogits

        self.processor = ValueGuidedLogits(None, torch.device("cpu"), False)  # type: ignore[arg-type]
        self.base = AutoModelForCausalLM.from_pretrained(world.base_path).eval()
        self.values = {str(p): AutoModelForTokenClassification.from_pretrained(p).eval()
                       for p in world.value_paths}
        self.paths = [str(p) for p in world.value_paths]
        self.batch: list[dict[str, Any] | None] = []
        """Per row: prompt, outputs (the live list), and betas and k when guided."""

    def params(self, betas: Sequence[float], k: int) -> Any:
        from vllm import SamplingParams

        from inference.engines.vllm_vas import VasArgs

        if not betas:
            return SamplingParams()
        return SamplingParams(extra_args=VasArgs(tuple(self.paths[:len(betas)]), tuple(betas),
                                                 k).extra_args())

    def step(self) -> None:
        """One decode step: base logits, the processor, a check per row, then argmax."""
        rows = [row for row in self.batch if row is not None]
        assert len(rows) == len(self.batch)
        with torch.no_grad():
            logits = torch.stack([self.base(torch.tensor([r["prompt"] + r["outputs"]]))
                                  .logits[0, -1] for r in rows])  # (B, V)
            steered = self.processor.apply(logits.clone())
            for row, base_logits, got in zip(rows, logits, steered):
                expected = self.reference(row, base_logits)
                assert torch.equal(torch.isinf(got), torch.isinf(expected))
                assert torch.allclose(got[~torch.isinf(got)], expected[~torch.isinf(expected)],
                                      atol=1e-3)
                row["outputs"].append(int(torch.argmax(got)))

    def reference(self, row: dict[str, Any], logits: torch.Tensor) -> torch.Tensor:
        if not row.get("betas"):
            return logits
        k = row["k"]
        candidate_ids = candidates(logits, k)
        prefix = torch.tensor([row["prompt"] + row["outputs"]]).repeat(k, 1)  # (k, T)
        extended = torch.cat([prefix, candidate_ids.view(-1, 1)], dim=1)  # (k, T+1)
        values = torch.stack([self.values[path](extended).logits[:, -1, 0]
                              for path in self.paths[:len(row["betas"])]])  # (M, k)
        return guided_logits(logits, candidate_ids, values, torch.tensor(row["betas"]))

    def update(self, removed: Sequence[int] = (), added: Sequence[tuple[int, dict[str, Any]]] = (),
               moved: Sequence[tuple[int, int, Any]] = ()) -> None:
        """Apply one BatchUpdate to the processor and to this mirror, in vLLM's order."""
        from vllm.v1.sample.logits_processor import BatchUpdate, MoveDirectionality

        for index in removed:
            self.batch[index] = None
        entries = []
        for index, row in added:
            self.batch.extend([None] * (index + 1 - len(self.batch)))
            self.batch[index] = row
            entries.append((index, self.params(row.get("betas", ()), row.get("k", 0)),
                            row["prompt"], row["outputs"]))
        for a, b, direction in moved:
            self.batch[a], self.batch[b] = ((self.batch[b], self.batch[a])
                                            if direction == MoveDirectionality.SWAP
                                            else (None, self.batch[a]))
        while self.batch and self.batch[-1] is None:
            self.batch.pop()
        self.processor.update_state(BatchUpdate(batch_size=len(self.batch), removed=removed,
                                                added=entries, moved=moved))


def test_rows_follow_removals_additions_moves_and_resyncs(
        inference_world: InferenceWorld, prompt_ids: list[int]) -> None:
    from vllm.v1.sample.logits_processor import MoveDirectionality

    rows = _Rows(inference_world)
    other = AutoTokenizer.from_pretrained(inference_world.base_path)("3+99=")["input_ids"]

    def row(prompt: list[int], betas: Sequence[float] = (), k: int = 0) -> dict[str, Any]:
        return {"prompt": list(prompt), "outputs": [], "betas": list(betas), "k": k}

    a, b, c = row(prompt_ids, (1.5,), 6), row(other), row(other, (1.0, -0.5), 4)
    rows.update(added=[(0, a), (1, b), (2, c)])
    rows.step()
    rows.step()
    rows.update(moved=[(0, 2, MoveDirectionality.SWAP)])  # c, b, a
    rows.step()
    # b finishes; condense moves the last row (a) into its slot: c, a
    rows.update(moved=[(2, 1, MoveDirectionality.UNIDIRECTIONAL)])
    rows.step()
    d, e = row(prompt_ids, (-0.8, 2.0), 5), row(prompt_ids)
    rows.update(added=[(2, d), (3, e)])  # c, a, d, e
    rows.step()
    # c finishes and a is preempted; a plain request takes c's slot (so that slot is not
    # listed as removed) and condense moves e into a's: f, e, d
    f = row(other)
    rows.update(added=[(0, f)], moved=[(3, 1, MoveDirectionality.UNIDIRECTIONAL)])
    # a comes back with the tokens it had: rebuilt from its prompt and outputs
    rows.update(added=[(3, a)])  # f, e, d, a
    rows.step()
    # d's outputs become part of its prompt (the list is cleared, the request re-added);
    # a's list loses its last token behind the processor's back: both resync
    d["prompt"], d["outputs"][:] = d["prompt"] + d["outputs"], []
    rows.update(added=[(2, d)])
    del a["outputs"][-1]
    rows.step()
    rows.step()
    assert sorted(rows.processor._rows) == [2, 3]  # white-box: only guided rows hold state
    rows.update(removed=[3, 2])
    rows.step()
    assert rows.processor._rows == {}
    assert all(r.users == 0 for r in rows.processor._models._resident.values())


@pytest.mark.parametrize(("damage", "message"), [
    ("gone", "config.json"), ("no weights", "no weights"), ("bad config", "not readable")])
def test_a_value_model_that_cannot_load_fails_its_request_alone(
        damage: str, message: str, vllm: Any, run: Run[Any], inference_world: InferenceWorld,
        prompt_ids: list[int], database_url: str, tmp_path: Path) -> None:
    from services.db.engine import session_scope
    from services.db.models import RegisteredModel

    folder = tmp_path / "value"
    if damage == "no weights":
        folder.mkdir()
        (folder / "config.json").write_text('{"model_type": "llama"}')
    elif damage == "bad config":
        folder.mkdir()
        (folder / "config.json").write_text("{not json")
        (folder / "model.safetensors").write_bytes(b"x")
    broken_id = f"vm:{inference_world.base}:{damage}:{tmp_path.name}"
    with session_scope(session_factory(database_url)) as session:
        session.add(RegisteredModel(id=broken_id, kind="value_model", path=str(folder),
                                    base_model=inference_world.base))
    broken = GenerationRequest(request_id="broken", model=inference_world.base,
                               prompt_ids=prompt_ids, options=SamplingOptions(
                                   max_tokens=4, value_guidance=(ValueGuide(broken_id, 1.0),)))
    with pytest.raises(InvalidRequest, match=message):
        run(collect(vllm, broken))
    steps = run(collect(vllm, guided_request(inference_world, prompt_ids, (1.0,), max_tokens=4)))
    assert len(steps) == 4  # the engine serves on
