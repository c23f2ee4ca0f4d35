"""`shared_prompt_logits`: a policy's response logits with each distinct prompt run once and no
padding are transformers' own on padded rows, and so are their gradients — the demo Llama and
the real families (Qwen2, Llama 3, Mistral, Gemma), LoRA policies over them; models it would
not reproduce are refused with the reason, and the policy then uses transformers' forward."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from modeling.logprobs import gather_logprobs, response_logits
from tests.decoded_families import DECODED, family_model, lora_over
from trainer.demo_world.model import build_model
from trainer.demo_world.tokenizer import build_tokenizer
from trainer.online.experience import pack
from trainer.online.shared_prompt import (
    shared_prompt_logits,
    supports_shared_prompt,
    unsupported_reason,
)

PROMPTS = [[1, 20, 21, 22, 23, 24], [1, 30, 31], [1, 40, 41, 42, 43], [1, 50]]
"""Four prompt lengths (left padding); each is answered several times below."""
ROWS = [(0, [60, 61, 62, 63, 64, 65, 66]), (0, [70]), (1, [71, 72, 2]), (0, [73, 74]),
        (2, [75, 76, 77, 78]), (1, [79]), (3, [80, 81, 0, 83, 84, 85, 86]), (2, [87, 88]),
        (3, [89, 90, 91]), (1, [92, 93, 94, 95, 96, 97, 60])]
"""(prompt, response) of each row: groups of 2-3 rows share a prompt, in no order, and the
responses run from 1 token to the widest. One samples id 0, the pad token of the demo Llama,
Qwen2 and Gemma (Qwen2's is also a stop token), whose embedding row gets no gradient."""
TOLERANCE = 3e-6
"""How far a logit may be from transformers', as a fraction of the largest logit's size.
float32 sums in another order: seen up to 1.1e-6 (logits up to 12-14) on an AVX2-only AMD
EPYC, where a fixed 1e-5 failed, and up to 1.4e-6 on the families (Qwen2, Gemma); a wrong
mask, position, bias or scale is off by whole units."""
LORA_TOLERANCE = 1e-5
"""A LoRA layer adds x·Aᵀ·Bᵀ to x·Wᵀ where this forward multiplies x by W + BA: seen up to
4.9e-6 of the largest logit."""
GRADIENT_TOLERANCE = 5e-5
"""How far a gradient may be from transformers', as a fraction of its largest entry: float32
sums in other orders (seen up to 1.8e-5, Gemma's default LoRA adapters)."""


def assert_logits_close(ours: torch.Tensor, expected: torch.Tensor, tolerance: float) -> None:
    """`ours` within `tolerance` x the largest |logit| of `expected`, everywhere."""
    scale = float(expected.detach().abs().max())
    torch.testing.assert_close(ours, expected, atol=tolerance * scale, rtol=0)


def llama(**overrides: Any) -> Any:
    """The demo Llama with larger random weights (peaked, not near-uniform, logits)."""
    return build_model(build_tokenizer(), seed=1, initializer_range=0.3, **overrides)


def lora_policy(dropout: float = 0.0) -> Any:
    """A peft LoRA model over the demo Llama with non-zero B, as a LoRA job trains it."""
    from peft import LoraConfig, get_peft_model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(2)
        model = get_peft_model(llama(), LoraConfig(r=4, lora_alpha=8, lora_dropout=dropout,
                                                   target_modules=["q_proj", "v_proj",
                                                                   "gate_proj", "down_proj"]))
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(std=0.3, generator=torch.Generator().manual_seed(len(name)))
    return model


def batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """sequences (B, S), attention_mask (B, S) and response mask (B, T) of `ROWS`, laid out
    as the online loop lays them out."""
    return pack([PROMPTS[p] for p, _ in ROWS], [r for _, r in ROWS], 0, torch.device("cpu"))


def objective(logits: torch.Tensor, sequences: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """A loss that reads every response token's log-probability with its own weight."""
    response_length = mask.shape[1]
    weights = torch.linspace(-1.0, 2.0, mask.numel()).view(mask.shape)
    logprobs = gather_logprobs(logits, sequences[:, -response_length:])  # (B, T)
    return (logprobs * weights * mask).sum()


MODELS: dict[str, Callable[[dict[str, Path]], Any]] = {
    "llama": lambda _: llama(),
    "grouped-query": lambda _: llama(num_attention_heads=4, num_key_value_heads=2),
    "lora": lambda _: lora_policy(),
    **{name: (lambda folders, name=name: family_model(folders[name])) for name in DECODED},
    **{f"{name}-lora": (lambda folders, name=name: lora_over(family_model(folders[name])))
       for name in DECODED},
    # Gemma and the small Qwen2 ship with the output layer tied to the embeddings.
    **{f"{name}-tied": (lambda folders, name=name: family_model(
        folders[name], tie_word_embeddings=True)) for name in ("qwen2", "gemma")},
}
"""Each model the shared-prompt forward takes, from the family folders (`family_models`)."""


@pytest.mark.parametrize("name, temperature", [
    *((name, 1.0) for name in MODELS), ("llama", 0.7), ("grouped-query", 0.7), ("lora", 0.7)])
def test_logits_and_gradients_are_transformers_own(name: str, temperature: float,
                                                   family_models: dict[str, Path]) -> None:
    model = MODELS[name](family_models).train()
    assert supports_shared_prompt(model), unsupported_reason(model)
    sequences, attention_mask, mask = batch()
    response_length = mask.shape[1]
    tolerance = LORA_TOLERANCE if "lora" in name else TOLERANCE

    expected = response_logits(model, sequences, attention_mask, response_length, temperature)
    ours = shared_prompt_logits(model, sequences, attention_mask, response_length, temperature)
    assert ours.shape == expected.shape
    real = mask.unsqueeze(-1).expand_as(ours)
    assert_logits_close(ours[real], expected[real], tolerance)
    assert torch.isfinite(ours).all()  # past a row's end too: a masked loss stays finite

    trained = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    want = torch.autograd.grad(objective(expected, sequences, mask), [p for _, p in trained])
    got = torch.autograd.grad(objective(ours, sequences, mask), [p for _, p in trained])
    for (parameter, _), theirs, mine in zip(trained, want, got, strict=True):
        scale = float(theirs.abs().max())
        assert float((mine - theirs).abs().max()) <= GRADIENT_TOLERANCE * scale, parameter


def test_a_batch_of_one_prompt_and_one_token_answers() -> None:
    model = llama().eval()
    sequences, attention_mask, _ = pack([[1, 20, 21]] * 3, [[5], [6], [7]], 0,
                                           torch.device("cpu"))
    with torch.no_grad():
        expected = response_logits(model, sequences, attention_mask, 1)
        ours = shared_prompt_logits(model, sequences, attention_mask, 1)
    assert_logits_close(ours, expected, TOLERANCE)


def test_a_lora_reference_is_the_base_models_logits() -> None:
    """π_ref of a LoRA job is the policy with its adapter switched off."""
    model = lora_policy().eval()
    sequences, attention_mask, mask = batch()
    with model.disable_adapter(), torch.no_grad():
        ours = shared_prompt_logits(model, sequences, attention_mask, mask.shape[1])
    with torch.no_grad():
        base = response_logits(llama().eval(), sequences, attention_mask, mask.shape[1])
    real = mask.unsqueeze(-1).expand_as(ours)
    assert_logits_close(ours[real], base[real], TOLERANCE)


@pytest.mark.parametrize("make, reason", [
    (lambda _: lora_policy(dropout=0.1), "dropout"),
    (lambda _: llama(attention_dropout=0.1), "attention dropout"),
    (lambda folders: family_model(folders["gpt2"]), "GPT2LMHeadModel is not one of"),
    (lambda _: GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=98)),
     "is not one of the architectures"),
])
def test_a_forward_it_would_not_reproduce_is_refused(make: Any, reason: str,
                                                     family_models: dict[str, Path]) -> None:
    model = make(family_models)
    assert not supports_shared_prompt(model)
    assert reason in (unsupported_reason(model) or "")
