"""Family checkpoints taught scripts: after given prompts they write given replies, so a test
knows what greedy decoding produces on any engine.

A randomly initialised checkpoint's greedy output is whatever its noise favours, and its logits
are so flat that a rounding difference between engines changes it. A few dozen AdamW steps on
the scripts themselves (one batch holding them all) make the model write each reply with a
probability near one at every token, far from any tie, and then save it the way its family
saves (`trainer.real_world.build.save_checkpoint`: Gemma in bf16, Qwen2 sharded).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from trainer.real_world.build import save_checkpoint
from trainer.real_world.families import FAMILIES

CLOSE_ENOUGH = 0.01
"""Training stops once every reply position's KL(target ‖ model) is below this (for a one-hot
target: the token's probability above 0.99)."""


@dataclass(frozen=True)
class Script:
    prompt: list[int]
    reply: list[int]
    """The tokens greedy decoding writes after ``prompt``, the last one a stop token."""
    first: dict[int, float] | None = None
    """The first reply token's distribution when it is not one-hot on ``reply[0]`` (the
    reply then goes on after ``reply[0]``)."""

    def targets(self, vocab: int) -> torch.Tensor:
        """(R, V) the target distribution of each reply position."""
        targets = torch.zeros((len(self.reply), vocab))
        targets[torch.arange(len(self.reply)), torch.tensor(self.reply)] = 1.0
        if self.first is not None:
            targets[0] = 0.0
            for token, probability in self.first.items():
                targets[0, token] = probability
        return targets


def continuation_ids(tokenizer: object, text: str) -> list[int]:
    """``text`` tokenized as a model writes it after a prompt, not as the start of a text (no
    bos, no sentencepiece ``▁`` before its first word): encoded after the eos, which is
    matched whole, then the eos dropped."""
    anchor = tokenizer.encode(tokenizer.eos_token, add_special_tokens=False)  # type: ignore[attr-defined]
    ids = tokenizer.encode(tokenizer.eos_token + text,  # type: ignore[attr-defined]
                           add_special_tokens=False)
    assert ids[:len(anchor)] == anchor
    return list(ids[len(anchor):])


def teach(source: Path, out: Path, family: str, scripts: Sequence[Script], *,
          vocab_size: int | None = None, max_steps: int = 600, seed: int = 0) -> Path:
    """A copy of the family checkpoint ``source`` in ``out`` that writes ``scripts``; with
    ``vocab_size``, its vocabulary first resized to that many ids (rows past the tokenizer's
    are what a padded vocabulary holds)."""
    tokenizer = AutoTokenizer.from_pretrained(source)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    if vocab_size is not None:
        model.resize_token_embeddings(vocab_size, mean_resizing=False)
    vocab = model.config.get_text_config().vocab_size
    inputs, targets, places = _batch(scripts, vocab)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    model.train()
    for step in range(max_steps):
        logprobs = torch.log_softmax(model(**inputs).logits.float(), dim=-1)[places]  # (N, V)
        gap = (targets * (torch.log(targets.clamp(min=1e-12)) - logprobs)).sum(-1)  # (N,) KL
        if step % 10 == 0 and float(gap.detach().max()) < CLOSE_ENOUGH:
            break
        optimizer.zero_grad(set_to_none=True)
        gap.mean().backward()
        optimizer.step()
    else:
        raise AssertionError(f"{family} did not learn its scripts in {max_steps} steps "
                             f"(worst KL {float(gap.max()):.3f})")
    model.eval()
    save_checkpoint(out, FAMILIES[family], tokenizer, model)
    return out


def _batch(scripts: Sequence[Script], vocab: int
           ) -> tuple[dict[str, torch.Tensor], torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """Right-padded inputs of every script's prompt ⊕ reply (its last token left out), the
    (N, V) targets of every reply position, and where those positions are, (rows, columns)."""
    rows = [script.prompt + script.reply[:-1] for script in scripts]
    width = max(len(row) for row in rows)
    input_ids = torch.zeros((len(rows), width), dtype=torch.long)
    mask = torch.zeros_like(input_ids)
    at_rows, at_columns, targets = [], [], []
    for index, (row, script) in enumerate(zip(rows, scripts, strict=True)):
        input_ids[index, :len(row)] = torch.tensor(row)
        mask[index, :len(row)] = 1
        start = len(script.prompt) - 1  # the position whose output is the first reply token
        at_rows += [index] * len(script.reply)
        at_columns += range(start, start + len(script.reply))
        targets.append(script.targets(vocab))
    places = (torch.tensor(at_rows), torch.tensor(at_columns))
    return {"input_ids": input_ids, "attention_mask": mask}, torch.cat(targets), places
