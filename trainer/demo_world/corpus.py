"""What the demo base model reads in pretraining: worked arithmetic with a base model's habits.

Each sequence is a problem and how the "web" answered it, as plain text
(``<bos>23+48=71<eos>``) or as a chat turn (``<bos><|user|>23+48=<|end|><|assistant|>71<|end|>``).
Most of the time the writer first copies the question out again (``23+48=23+48=71``), as
worksheets do; sometimes the answer is simply wrong (`wrong_answer`). A model pretrained on this
learns the arithmetic, yet greedy decoding mostly echoes the question, whose first integer the
gold grader reads as the answer: the base model knows more than it shows. Fine-tuning on the
demonstrations fixes the format and copies their slips (`datasets.SLIP_RATE`); DPO or online RL
against the grader then fixes the slips.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass

from trainer.demo_world.task import Problem, sample_problem, wrong_answer
from trainer.demo_world.tokenizer import ASSISTANT, BOS, END, EOS, USER


@dataclass(frozen=True)
class PretrainCorpus:
    seed: int
    held_out: frozenset[str]
    """Prompts that never appear in pretraining (the evaluation prompts)."""
    echo_rate: float = 0.6
    """How often the question is copied out again before its answer."""
    noise_rate: float = 0.1
    """How often the answer is a plausible wrong one (`wrong_answer`) instead of the gold one."""
    chat_rate: float = 0.2
    """How often a sequence is a chat turn rather than plain text."""
    max_operand: int = 99
    ops: str = "+-"

    def __post_init__(self) -> None:
        for name in ("echo_rate", "noise_rate", "chat_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")

    def turns(self) -> Iterator[tuple[str, str, bool]]:
        """An endless, deterministic stream of ``(prompt, continuation, as_chat)``: what each
        pretraining text says, and whether it is written as a chat turn or as plain text."""
        rng = random.Random(f"demo-pretrain:{self.seed}")
        while True:
            problem = sample_problem(rng, max_operand=self.max_operand, ops=self.ops)
            if problem.prompt in self.held_out:
                continue
            continuation = self.continuation(problem, rng)
            yield problem.prompt, continuation, rng.random() < self.chat_rate

    def texts(self) -> Iterator[str]:
        """An endless, deterministic stream of pretraining texts, special tokens written out."""
        for prompt, continuation, as_chat in self.turns():
            if as_chat:
                yield f"{BOS}{USER}{prompt}{END}{ASSISTANT}{continuation}{END}"
            else:
                yield f"{BOS}{prompt}{continuation}{EOS}"

    def batches(self, batch_size: int) -> Iterator[list[str]]:
        """`texts` cut into lists of ``batch_size``."""
        texts = self.texts()
        while True:
            yield [next(texts) for _ in range(batch_size)]

    def continuation(self, problem: Problem, rng: random.Random) -> str:
        """What follows the prompt: an answer, perhaps wrong, perhaps after an echo of the prompt."""
        answer = wrong_answer(problem, rng) if rng.random() < self.noise_rate else problem.answer
        return problem.prompt + answer if rng.random() < self.echo_rate else answer
