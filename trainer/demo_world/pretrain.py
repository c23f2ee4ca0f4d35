"""A short causal-LM pretraining loop for the demo model (CPU, a couple of minutes)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from transformers import LlamaForCausalLM, PreTrainedTokenizerBase

ProgressCallback = Callable[[int, int, float], None]
"""``progress(step, total, loss)`` after each optimizer step (``step`` counts from 1)."""


@dataclass(frozen=True)
class PretrainConfig:
    steps: int = 2500
    """Optimizer steps; each sees `batch_size` fresh sequences. The arithmetic "clicks" for
    this model somewhere between 1,000 and 2,000 steps, at a point that varies with the seed;
    with 2,500, each of the 4 seeds tried reached 73-80% held-out accuracy after 300 SFT
    steps (1,500 steps: 43-72%)."""
    batch_size: int = 64
    learning_rate: float = 1e-3
    """Peak AdamW learning rate, reached after `warmup_steps` and cosine-decayed to 10%."""
    warmup_steps: int = 50
    weight_decay: float = 0.01
    max_threads: int = 2
    """Cap on torch CPU threads: more only adds overhead for matrices this small."""

    def __post_init__(self) -> None:
        if self.steps < 0 or self.batch_size < 1:
            raise ValueError(f"steps must be >= 0 and batch_size >= 1, got {self}")


def learning_rate_at(step: int, config: PretrainConfig) -> float:
    """Learning rate for 0-based ``step``: linear warmup, then cosine decay to 10% of the peak."""
    # 1) warmup
    if step < config.warmup_steps:
        return config.learning_rate * (step + 1) / config.warmup_steps
    # 2) cosine from the peak down to a 10% floor at the last step
    span = max(1, config.steps - config.warmup_steps)
    progress = min(1.0, (step - config.warmup_steps) / span)
    return config.learning_rate * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress)))


def encode_batch(tokenizer: PreTrainedTokenizerBase, texts: list[str]) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids``/``attention_mask``/``labels``, each (B, T); pads are -100.

    ``texts`` already spell out their special tokens, so none are added here. Padding is done
    here, not by the tokenizer, so a tokenizer without a pad token (Llama 3's) works too.
    """
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    length = max(len(row) for row in ids)
    input_ids = torch.zeros((len(ids), length), dtype=torch.long)  # (B, T)
    attention_mask = torch.zeros((len(ids), length), dtype=torch.long)  # (B, T)
    for row, sequence in enumerate(ids):
        input_ids[row, : len(sequence)] = torch.tensor(sequence, dtype=torch.long)
        attention_mask[row, : len(sequence)] = 1
    labels = input_ids.masked_fill(attention_mask == 0, -100)  # (B, T)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


@contextmanager
def limited_threads(max_threads: int) -> Iterator[None]:
    """Cap torch's intra-op threads for the block, then put the caller's setting back."""
    previous = torch.get_num_threads()
    torch.set_num_threads(max(1, min(previous, max_threads)))
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def pretrain(
    model: LlamaForCausalLM,
    tokenizer: PreTrainedTokenizerBase,
    batches: Iterator[list[str]],
    config: PretrainConfig,
    progress: ProgressCallback | None = None,
) -> list[float]:
    """Train ``model`` in place on next-token loss over whole sequences; returns the step losses."""
    optimizer = torch.optim.AdamW(
        model.parameters(),
        lr=config.learning_rate,
        betas=(0.9, 0.98),
        weight_decay=config.weight_decay,
    )
    losses: list[float] = []
    model.train()
    with limited_threads(config.max_threads):
        for step in range(config.steps):
            for group in optimizer.param_groups:
                group["lr"] = learning_rate_at(step, config)
            loss = model(**encode_batch(tokenizer, next(batches))).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            losses.append(loss.item())
            if progress is not None:
                progress(step + 1, config.steps, losses[-1])
    model.eval()
    return losses
