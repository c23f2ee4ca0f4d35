"""`LlamaDecoder`: the transformers Llama's own logits from a few torch ops per layer, over the
live weights, and a refusal for every model whose forward it would not reproduce."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from transformers import DynamicCache, GPT2Config, GPT2LMHeadModel

from inference.engines.llama_decoder import LlamaDecoder, supports, unsupported_reason
from trainer.demo_world.model import build_model
from trainer.demo_world.tokenizer import build_tokenizer

PROMPTS = [[1, 20, 21, 22, 23, 24], [1, 30, 31], [1, 40, 41, 42, 43]]
"""Three prompt lengths, so the batch is left-padded."""
STEPS = [[50, 51, 52], [60, 61, 62], [70, 71, 72], [80, 81, 82]]
"""Tokens appended after the prompts, one per row per step."""
LORA_TOLERANCE = 1e-4
"""A LoRA layer adds x·Aᵀ·Bᵀ to x·Wᵀ where the decoder multiplies x by W + BA: the same sum,
rounded differently."""


def llama(**overrides: Any) -> Any:
    """The demo Llama with larger random weights (peaked, not near-uniform, logits)."""
    return build_model(build_tokenizer(), seed=1, initializer_range=0.3, **overrides).eval()


def lora_policy() -> Any:
    """A peft LoRA model over the demo Llama, on attention and MLP projections and the output
    layer, with non-zero B (so the adapter changes the logits)."""
    from peft import LoraConfig, get_peft_model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(2)  # A's initialisation
        model = get_peft_model(llama(), LoraConfig(r=4, lora_alpha=8, target_modules=[
            "q_proj", "v_proj", "gate_proj", "down_proj", "lm_head"]))
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(std=0.3, generator=torch.Generator().manual_seed(len(name)))
    return model.eval()


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


@pytest.mark.parametrize("make", [
    llama,
    lambda: llama(num_attention_heads=4, num_key_value_heads=2),  # grouped-query attention
    lambda: llama(num_attention_heads=4, num_key_value_heads=1),
    lambda: llama(tie_word_embeddings=True),
    lora_policy,
], ids=["mha", "gqa-2", "gqa-1", "tied", "lora"])
def test_prefill_and_decode_steps_give_the_models_own_logits(make: Any) -> None:
    model = make()
    assert supports(model)
    with torch.inference_mode():
        decoder = LlamaDecoder.of(model)
        ids, mask = left_padded(PROMPTS)
        logits = [decoder.prefill(ids, mask, ids.shape[1] + len(STEPS))]
        logits += [decoder.step(torch.tensor(tokens)) for tokens in STEPS]
        rows = [list(prompt) for prompt in PROMPTS]
        whole = [reference_logits(model, rows)]
        for tokens in STEPS:
            rows = [row + [token] for row, token in zip(rows, tokens, strict=True)]
            whole.append(reference_logits(model, rows))
        cached = cached_logits(model)
    tolerance = LORA_TOLERANCE if make is lora_policy else 1e-5
    for ours, incremental, full in zip(logits, cached, whole, strict=True):
        torch.testing.assert_close(ours, incremental, atol=tolerance, rtol=1e-5)
        # One forward over the whole sequence rounds differently from a cached decode (by up
        # to ~1e-5 of the logits' scale, the model against itself): a looser bound.
        torch.testing.assert_close(ours, full, atol=1e-4, rtol=1e-5)


def test_dropped_rows_leave_the_others_logits_unchanged() -> None:
    model = llama()
    with torch.inference_mode():
        decoder = LlamaDecoder.of(model)
        ids, mask = left_padded(PROMPTS)
        decoder.prefill(ids, mask, ids.shape[1] + 2)
        decoder.step(torch.tensor(STEPS[0]))
        decoder.keep(torch.tensor([2, 0]))
        logits = decoder.step(torch.tensor([STEPS[1][2], STEPS[1][0]]))
        rows = [PROMPTS[2] + [STEPS[0][2], STEPS[1][2]], PROMPTS[0] + [STEPS[0][0], STEPS[1][0]]]
        torch.testing.assert_close(logits, reference_logits(model, rows), atol=1e-5, rtol=1e-5)


def test_a_decoder_reads_the_weights_as_they_are_when_it_is_built() -> None:
    model = lora_policy()
    ids, mask = left_padded(PROMPTS)
    with torch.inference_mode():
        before = LlamaDecoder.of(model).prefill(ids, mask, ids.shape[1])
    with torch.no_grad():  # an optimizer step, on a base weight and on an adapter
        model.get_base_model().model.layers[0].mlp.up_proj.weight.mul_(-2.0)
        for name, parameter in model.named_parameters():
            if "lora_A" in name:
                parameter.mul_(3.0)
    with torch.inference_mode():
        after = LlamaDecoder.of(model).prefill(ids, mask, ids.shape[1])
        expected = reference_logits(model, PROMPTS)
    assert not torch.allclose(before, after, atol=1e-3)
    torch.testing.assert_close(after, expected, atol=LORA_TOLERANCE, rtol=1e-5)


def test_models_whose_forward_it_would_not_reproduce_are_refused() -> None:
    from peft import LoraConfig, get_peft_model

    vocabulary = len(build_tokenizer())
    refused = {
        "gpt2": GPT2LMHeadModel(GPT2Config(vocab_size=vocabulary, n_embd=32, n_layer=1,
                                           n_head=2, n_positions=64)),
        "rope scaling": llama(rope_parameters={"rope_type": "linear", "rope_theta": 10000.0,
                                               "factor": 2.0}),
        "attention bias": llama(attention_bias=True),
        "mlp bias": llama(mlp_bias=True),
        "gelu": llama(hidden_act="gelu"),
        "dora": get_peft_model(llama(), LoraConfig(r=4, lora_alpha=8, use_dora=True,
                                                   target_modules=["q_proj"])),
    }
    for name, model in refused.items():
        assert not supports(model), name
        assert unsupported_reason(model), name
    assert unsupported_reason(llama()) is None
