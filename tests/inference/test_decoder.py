"""`Decoder`: the transformers model's own logits from a few torch ops per layer, over the live
weights — the demo Llama and the real families (Qwen2's biases, Llama 3's RoPE scaling,
Mistral's sliding window, Gemma's norms, embedding scale and GELU), LoRA policies over them —
and a refusal, with its reason, for every model whose forward it would not reproduce."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import DynamicCache, GPT2Config, GPT2LMHeadModel

from inference.engines.decoder import Decoder, supports, unsupported_reason
from tests.decoded_families import DECODED, family_model, lora_over
from trainer.demo_world.model import build_model
from trainer.demo_world.tokenizer import build_tokenizer

PROMPTS = [[1, 20, 21, 22, 23, 24], [1, 30, 31], [1, 40, 41, 42, 43]]
"""Three prompt lengths, so the batch is left-padded."""
STEPS = [[50, 51, 52], [60, 61, 62], [70, 71, 72], [80, 81, 82]]
"""Tokens appended after the prompts, one per row per step."""
TOLERANCE = 3e-6
"""How far a logit may be from the model's own cached decode, as a fraction of the largest
logit's size: float32 sums in another order (seen up to 6e-7, logits of 10-20 on every
family); a wrong bias, scale, mask or position is off by whole units."""
LORA_TOLERANCE = 1e-5
"""A LoRA layer adds x·Aᵀ·Bᵀ to x·Wᵀ where the decoder multiplies x by W + BA: the same sum,
rounded differently (seen up to 4.8e-6, Mistral's default q/v adapters)."""
WHOLE_TOLERANCE = 1e-5
"""Against one forward over the whole sequence, which rounds differently from a cached decode
(the model against itself, by up to about 1e-6 of the logits' scale)."""

ModelMaker = Callable[[dict[str, Path]], Any]


def llama(**overrides: Any) -> Any:
    """The demo Llama with larger random weights (peaked, not near-uniform, logits)."""
    return build_model(build_tokenizer(), seed=1, initializer_range=0.3, **overrides).eval()


def lora_policy() -> Any:
    """A peft LoRA model over the demo Llama, on attention and MLP projections and the output
    layer, with non-zero B (so the adapter changes the logits)."""
    return lora_over(llama(), target_modules=["q_proj", "v_proj", "gate_proj", "down_proj",
                                              "lm_head"])


MODELS: dict[str, ModelMaker] = {
    "mha": lambda _: llama(),
    "gqa-2": lambda _: llama(num_attention_heads=4, num_key_value_heads=2),
    "gqa-1": lambda _: llama(num_attention_heads=4, num_key_value_heads=1),
    "tied": lambda _: llama(tie_word_embeddings=True),
    "biased": lambda _: llama(attention_bias=True, mlp_bias=True),
    "linear-rope": lambda _: llama(rope_parameters={"rope_type": "linear", "factor": 2.0,
                                                    "rope_theta": 10000.0}),
    "lora": lambda _: lora_policy(),
    **{name: (lambda folders, name=name: family_model(folders[name])) for name in DECODED},
    **{f"{name}-lora": (lambda folders, name=name: lora_over(family_model(folders[name])))
       for name in DECODED},
    # Gemma and the small Qwen2 ship with the output layer tied to the embeddings.
    **{f"{name}-tied": (lambda folders, name=name: family_model(
        folders[name], tie_word_embeddings=True)) for name in ("qwen2", "gemma")},
    "qwen2-yarn": lambda folders: family_model(folders["qwen2"], rope_parameters={
        "rope_type": "yarn", "rope_theta": 1_000_000.0, "factor": 4.0,
        "original_max_position_embeddings": 128}),
}
"""Each model the decoder takes, from the family folders (`family_models`)."""


def left_padded(rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    longest = max(len(row) for row in rows)
    ids = torch.zeros((len(rows), longest), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for index, row in enumerate(rows):
        ids[index, longest - len(row):] = torch.tensor(row)
        mask[index, longest - len(row):] = 1
    return ids, mask


def reference_logits(model: Any, rows: list[list[int]]) -> torch.Tensor:
    """(B, V) the model's own next-token logits for left-padded ``rows``, in one forward."""
    ids, mask = left_padded(rows)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return model(input_ids=ids, attention_mask=mask, position_ids=positions).logits[:, -1]


def cached_logits(model: Any) -> list[torch.Tensor]:
    """(B, V) the model's own next-token logits after `PROMPTS`, then after each of `STEPS`,
    decoded with its own KV cache (as `model.generate` and the torch engine do)."""
    ids, mask = left_padded(PROMPTS)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    cache = DynamicCache()
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=cache)
    logits = [out.logits[:, -1]]
    for tokens in STEPS:
        mask = torch.cat([mask, torch.ones((len(PROMPTS), 1), dtype=torch.long)], dim=-1)
        positions = positions[:, -1:] + 1
        out = model(input_ids=torch.tensor(tokens)[:, None], attention_mask=mask,
                    position_ids=positions, past_key_values=cache)
        logits.append(out.logits[:, -1])
    return logits


def relative_error(ours: torch.Tensor, expected: torch.Tensor) -> float:
    """The largest |ours - expected| as a fraction of the largest |expected|."""
    return float((ours - expected).abs().max() / expected.abs().max())


@pytest.mark.parametrize("name", list(MODELS))
def test_prefill_and_decode_steps_give_the_models_own_logits(
        name: str, family_models: dict[str, Path]) -> None:
    model = MODELS[name](family_models)
    assert supports(model), unsupported_reason(model)
    with torch.inference_mode():
        decoder = Decoder.of(model)
        ids, mask = left_padded(PROMPTS)
        logits = [decoder.prefill(ids, mask, ids.shape[1] + len(STEPS))]
        logits += [decoder.step(torch.tensor(tokens)) for tokens in STEPS]
        rows = [list(prompt) for prompt in PROMPTS]
        whole = [reference_logits(model, rows)]
        for tokens in STEPS:
            rows = [row + [token] for row, token in zip(rows, tokens, strict=True)]
            whole.append(reference_logits(model, rows))
        cached = cached_logits(model)
    tolerance = LORA_TOLERANCE if "lora" in name else TOLERANCE
    errors = [relative_error(ours, incremental) for ours, incremental in zip(logits, cached,
                                                                             strict=True)]
    if os.environ.get("ALIGND_PRINT_TOLERANCES"):
        print(f"\n{name}: {max(errors):.2e} of {float(cached[0].abs().max()):.1f}")
    assert max(errors) <= tolerance, errors
    assert max(relative_error(ours, full) for ours, full in zip(logits, whole,
                                                                strict=True)) <= WHOLE_TOLERANCE


def test_dropped_rows_leave_the_others_logits_unchanged() -> None:
    model = llama()
    with torch.inference_mode():
        decoder = Decoder.of(model)
        ids, mask = left_padded(PROMPTS)
        decoder.prefill(ids, mask, ids.shape[1] + 2)
        decoder.step(torch.tensor(STEPS[0]))
        decoder.keep(torch.tensor([2, 0]))
        logits = decoder.step(torch.tensor([STEPS[1][2], STEPS[1][0]]))
        rows = [PROMPTS[2] + [STEPS[0][2], STEPS[1][2]], PROMPTS[0] + [STEPS[0][0], STEPS[1][0]]]
        assert relative_error(logits, reference_logits(model, rows)) <= WHOLE_TOLERANCE


def test_a_decoder_reads_the_weights_as_they_are_when_it_is_built() -> None:
    model = lora_policy()
    ids, mask = left_padded(PROMPTS)
    with torch.inference_mode():
        before = Decoder.of(model).prefill(ids, mask, ids.shape[1])
    with torch.no_grad():  # an optimizer step, on a base weight and on an adapter
        model.get_base_model().model.layers[0].mlp.up_proj.weight.mul_(-2.0)
        for name, parameter in model.named_parameters():
            if "lora_A" in name:
                parameter.mul_(3.0)
    with torch.inference_mode():
        after = Decoder.of(model).prefill(ids, mask, ids.shape[1])
        expected = reference_logits(model, PROMPTS)
    assert not torch.allclose(before, after, atol=1e-3)
    assert relative_error(after, expected) <= LORA_TOLERANCE


def test_models_whose_forward_it_would_not_reproduce_are_refused(
        family_models: dict[str, Path]) -> None:
    from peft import LoraConfig, get_peft_model

    vocabulary = len(build_tokenizer())
    refused = {
        "GPT2LMHeadModel is not one of": family_model(family_models["gpt2"]),
        "is not one of the architectures": GPT2LMHeadModel(GPT2Config(
            vocab_size=vocabulary, n_embd=32, n_layer=1, n_head=2, n_positions=64,
            bos_token_id=1, eos_token_id=2)),
        "rope type 'dynamic'": llama(rope_parameters={"rope_type": "dynamic", "factor": 2.0,
                                                      "rope_theta": 10000.0}),
        "sliding-window attention over 16 tokens": family_model(family_models["mistral"],
                                                                sliding_window=16),
        "activation ReLU": llama(hidden_act="relu"),
        "variant (e.g. DoRA)": get_peft_model(llama(), LoraConfig(
            r=4, lora_alpha=8, use_dora=True, target_modules=["q_proj"])),
    }
    for reason, model in refused.items():
        assert not supports(model), reason
        assert reason in (unsupported_reason(model) or ""), unsupported_reason(model)
    assert unsupported_reason(llama()) is None
