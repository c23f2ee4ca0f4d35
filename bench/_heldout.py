"""Held-out quality of a demo-task policy, and a training run's peak memory (bench/rl_quality).

On the demo world's held-out problems: greedy exact match graded by `gold_grade`, the mean gold
reward of EVAL_SAMPLES responses sampled at temperature 1, and the KL to a start model
estimated on those samples.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

EVAL_SAMPLES = 4
"""Responses sampled per held-out prompt for the mean reward and the KL."""
MAX_NEW_TOKENS = 8
"""Greedy tokens per held-out answer (answers are at most 4 characters and a stop token)."""


@dataclass
class Quality:
    """A model on the held-out prompts."""

    exact_match: float
    mean_reward: float
    kl_to_start: float
    unsolved_exact_match: float
    """Exact match on the prompts whose supervised samples were all wrong."""
    solved_in_samples: list[bool] = field(repr=False)
    """Per prompt: at least one of its samples was right."""


@dataclass
class Samples:
    """EVAL_SAMPLES responses per held-out prompt, prompt by prompt."""

    prompts: list[list[int]]
    responses: list[list[int]]
    texts: list[str]
    rows: list[dict[str, Any]]


def sample(model: Any, model_path: Path, tokenizer: Any, rows: list[dict[str, Any]],
           seed: int) -> Samples:
    from inference.local import LocalGenerator
    from modeling.sequences import UNLIMITED, encode_prompt
    from trainer.online.sampler import RolloutOptions, Sampler

    prompts = [encode_prompt(tokenizer, row, UNLIMITED) for row in rows]
    sampler = Sampler(model_path, tokenizer, LocalGenerator(max_batch_size=256),
                      live_model=model)
    try:
        completions = sampler.sample(prompts, RolloutOptions(
            samples_per_prompt=EVAL_SAMPLES, max_new_tokens=MAX_NEW_TOKENS, temperature=1.0,
            top_k=0, seed=seed))
    finally:
        sampler.close()
    return Samples([prompts[c.prompt] for c in completions], [c.token_ids for c in completions],
                   [c.text for c in completions], [rows[c.prompt] for c in completions])


@torch.no_grad()
def sequence_logprobs(model: Any, samples: Samples, pad_id: int, batch: int = 256) -> Tensor:
    """(N,) Σ_t log π(a_t | s_t) of each sampled response under ``model``."""
    from modeling.logprobs import gather_logprobs, response_logits
    from trainer.online.experience import chunks, pack

    totals = []
    for rows in chunks(len(samples.prompts), batch):
        sequences, attention_mask, mask = pack(samples.prompts[rows], samples.responses[rows],
                                               pad_id, torch.device("cpu"))
        length = mask.shape[1]
        logits = response_logits(model, sequences, attention_mask, length)  # (b, T, V)
        logprobs = gather_logprobs(logits, sequences[:, -length:])  # (b, T)
        totals.append((logprobs * mask).sum(-1))
    return torch.cat(totals)


def measure(model: Any, start: Any, model_path: Path, tokenizer: Any,
            rows: list[dict[str, Any]], solved_before: list[bool] | None) -> Quality:
    """``model`` on the held-out ``rows``; ``start`` is the supervised model (KL's reference)."""
    from trainer.demo_world.evaluate import greedy_completions
    from trainer.demo_world.task import gold_grade

    model.eval()
    greedy = greedy_completions(model, tokenizer, [r["prompt"] for r in rows],
                                max_new_tokens=MAX_NEW_TOKENS, batch_size=200)
    right = [gold_grade(text, row["answer"]) for text, row in zip(greedy, rows)]
    samples = sample(model, model_path, tokenizer, rows, seed=0)
    rewards = [gold_grade(t, r["answer"]) for t, r in zip(samples.texts, samples.rows)]
    pad_id = tokenizer.pad_token_id
    kl = sequence_logprobs(model, samples, pad_id) - sequence_logprobs(start, samples, pad_id)
    solved = [max(rewards[i * EVAL_SAMPLES:(i + 1) * EVAL_SAMPLES]) > 0 for i in range(len(rows))]
    unsolved = [r for r, s in zip(right, solved_before or solved) if not s]
    return Quality(exact_match=statistics.mean(right), mean_reward=statistics.mean(rewards),
                   kl_to_start=float(kl.mean()),
                   unsolved_exact_match=statistics.mean(unsolved) if unsolved else float("nan"),
                   solved_in_samples=solved)



# --- peak memory ---------------------------------------------------------------------------


def reset_peak_memory() -> float:
    """The memory held now (MiB); from here on `peak_memory` reports the peak. On CPU the
    resident set's high-water mark is reset through /proc/self/clear_refs (Linux)."""
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated() / 2**20
    Path("/proc/self/clear_refs").write_text("5")
    return _proc_status_mib("VmRSS")


def peak_memory() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return _proc_status_mib("VmHWM")


def _proc_status_mib(field_name: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field_name}:"):
            return int(line.split()[1]) / 2**10  # kB
    return float("nan")
