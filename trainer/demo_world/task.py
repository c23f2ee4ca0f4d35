"""The demo world's task: small integer arithmetic with a verifiable answer.

A problem is a prompt such as ``"23+48="`` whose gold answer is ``"71"``. This module is pure
Python (no torch) because the reward service reuses `gold_grade` as a verifiable grader.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from dataclasses import dataclass

OPERATORS = "+-*"
"""Every operator a problem may use; `make_problems(ops=...)` picks a subset."""

END_MARKERS = ("<eos>", "<|end|>", "\n")
"""A completion ends at the first of these; the answer is read from the text before it."""

_INTEGER = re.compile(r"-?\d+")


@dataclass(frozen=True)
class Problem:
    prompt: str
    """What the model sees, e.g. ``"23+48="``."""
    answer: str
    """The gold answer as the model should write it, e.g. ``"71"`` or ``"-25"``."""

    @property
    def operands(self) -> tuple[int, str, int]:
        """``(left, operator, right)`` parsed back from the prompt."""
        match = re.fullmatch(r"(\d+)([+\-*])(\d+)=", self.prompt)
        if match is None:
            raise ValueError(f"not a demo problem prompt: {self.prompt!r}")
        return int(match.group(1)), match.group(2), int(match.group(3))


def _evaluate(left: int, op: str, right: int) -> int:
    if op == "+":
        return left + right
    if op == "-":
        return left - right
    return left * right


def make_problem(left: int, op: str, right: int) -> Problem:
    """The problem ``left op right`` with its gold answer."""
    if op not in OPERATORS:
        raise ValueError(f"op must be one of {OPERATORS!r}, got {op!r}")
    if left < 0 or right < 0:
        raise ValueError(f"operands must be non-negative, got {left} and {right}")
    return Problem(prompt=f"{left}{op}{right}=", answer=str(_evaluate(left, op, right)))


def sample_problem(rng: random.Random, *, max_operand: int = 99, ops: str = "+-") -> Problem:
    """One problem with operands drawn uniformly from ``[0, max_operand]`` (repeats allowed)."""
    return make_problem(rng.randint(0, max_operand), rng.choice(ops), rng.randint(0, max_operand))


def make_problems(n: int, seed: int, *, max_operand: int = 99, ops: str = "+-") -> list[Problem]:
    """``n`` distinct problems, the same list for the same arguments.

    Distinct prompts let callers cut one list into disjoint splits (training vs held-out).
    """
    if not ops or any(op not in OPERATORS for op in ops):
        raise ValueError(f"ops must be a non-empty string over {OPERATORS!r}, got {ops!r}")
    if max_operand < 0:
        raise ValueError(f"max_operand must be >= 0, got {max_operand}")
    space = (max_operand + 1) ** 2 * len(set(ops))
    if not 0 <= n <= space:
        raise ValueError(f"n must be in [0, {space}] for max_operand={max_operand}, ops={ops!r}")
    rng = random.Random(f"demo-problems:{seed}")
    seen: set[str] = set()
    problems: list[Problem] = []
    while len(problems) < n:
        problem = sample_problem(rng, max_operand=max_operand, ops=ops)
        if problem.prompt not in seen:
            seen.add(problem.prompt)
            problems.append(problem)
    return problems


def extract_answer(text: str) -> str | None:
    """The first integer of a completion, read before its end marker; None when there is none.

    >>> extract_answer(" 71<eos>garbage 5")
    '71'
    """
    for marker in END_MARKERS:
        text = text.split(marker, 1)[0]
    match = _INTEGER.search(text.strip())
    return match.group(0) if match else None


def gold_grade(completion: str, answer: str) -> float:
    """1.0 when the completion's first integer equals the gold answer, else 0.0.

    Compared as integers, so ``"071"`` and ``"-0"`` are read the way a person would read them.
    """
    extracted = extract_answer(completion)
    gold = extract_answer(answer)
    if extracted is None or gold is None:
        return 0.0
    return 1.0 if int(extracted) == int(gold) else 0.0


def misconception_answer(problem: Problem) -> str:
    """The answer of someone who never carries or borrows, column by column.

    Adding, each column keeps only its last digit except the leftmost (``57+68`` -> ``"115"``);
    subtracting, each column takes the smaller digit from the larger (``61-28`` -> ``"47"``).
    Problems without a carry or borrow, and products, get their gold answer. One of the
    classic mistakes `wrong_answer` draws from.
    """
    left, op, right = problem.operands
    if op == "+":
        return _columns(left, right, lambda a, b: a + b)
    if op == "-":
        big, small = max(left, right), min(left, right)
        digits = _columns(big, small, lambda a, b: abs(a - b)).lstrip("0") or "0"
        return digits if left >= right or digits == "0" else f"-{digits}"
    return problem.answer


def _columns(left: int, right: int, column: Callable[[int, int], int]) -> str:
    """Apply ``column`` to aligned decimal digits (no carries); the leftmost result is kept whole."""
    width = max(len(str(left)), len(str(right)))
    a_digits, b_digits = str(left).zfill(width), str(right).zfill(width)
    results = [column(int(a), int(b)) for a, b in zip(a_digits, b_digits)]
    return str(results[0]) + "".join(str(value % 10) for value in results[1:])


def wrong_answer(problem: Problem, rng: random.Random) -> str:
    """A plausible wrong answer: off by a little, digits swapped, or the misconception answer."""
    gold = int(problem.answer)
    candidates = [str(gold + delta) for delta in (-10, -2, -1, 1, 2, 10)]
    digits = problem.answer.lstrip("-")
    if len(digits) >= 2 and digits[-1] != digits[-2]:
        swapped = digits[:-2] + digits[-1] + digits[-2]
        candidates.append(("-" if gold < 0 else "") + str(int(swapped)))
    candidates.append(misconception_answer(problem))
    wrong = [c for c in candidates if int(c) != gold]
    return rng.choice(wrong)
