"""Held-out exact-match accuracy of a saved model on demo problems (greedy decoding)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from trainer.demo_world.task import gold_grade


def load_for_generation(model_dir: Path, adapter_dir: Path | None = None) -> Any:
    """The causal LM in ``model_dir`` in eval mode, with the peft adapter applied if given."""
    model: Any = AutoModelForCausalLM.from_pretrained(model_dir)
    if adapter_dir is not None:
        # Imported here: peft is only needed when an adapter is evaluated.
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter_dir)
    return model.eval()


@torch.inference_mode()
def greedy_completions(
    model: Any, tokenizer: Any, prompts: list[str], *, max_new_tokens: int, batch_size: int
) -> list[str]:
    """Greedy continuation of each prompt (the tokenizer's special tokens added, e.g. bos),
    cut at the first of the model's stop tokens and decoded without special tokens."""
    stops = model.generation_config.eos_token_id
    stops = {stops} if isinstance(stops, int) else set(stops or [tokenizer.eos_token_id])
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(stops)
    completions: list[str] = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        ids = [tokenizer(prompt)["input_ids"] for prompt in chunk]
        # Left padding puts every prompt's last token at the same position, where decoding starts.
        width = max(len(row) for row in ids)
        input_ids = torch.tensor([[pad] * (width - len(row)) + row for row in ids])  # (B, L)
        attention_mask = torch.tensor([[0] * (width - len(row)) + [1] * len(row) for row in ids])
        generated = model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=pad,
        )  # (B, L + new)
        for row in generated[:, width:].tolist():  # (new,) each
            cut = next((at for at, token in enumerate(row) if token in stops), len(row))
            completions.append(tokenizer.decode(row[:cut], skip_special_tokens=True))
    return completions


def exact_match_accuracy(
    model_dir: Path,
    rows: list[dict],
    *,
    max_new_tokens: int = 8,
    batch_size: int = 64,
    adapter_dir: Path | None = None,
) -> float:
    """Fraction of ``rows`` (``{"prompt", "answer"}``) whose greedy completion grades 1.0."""
    if not rows:
        raise ValueError("rows must not be empty")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = load_for_generation(Path(model_dir), adapter_dir)
    completions = greedy_completions(
        model,
        tokenizer,
        [row["prompt"] for row in rows],
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
    )
    scores = [gold_grade(text, row["answer"]) for text, row in zip(completions, rows)]
    return sum(scores) / len(scores)
