"""The demo world's JSONL datasets, each drawn from the task's gold grader.

One list of distinct problems is cut into disjoint splits, evaluation first, so the held-out
evaluation prompts appear in no training file (nor in pretraining, which skips them too).
Every file has its own random stream, seeded from the world seed and the file's name.

The supervised demonstrations come from a sloppy demonstrator who often forgets to carry or
borrow (`SLIP_RATE`), as human demonstrations are imperfect: fine-tuning copies the slips, and
what the gold grader then teaches (DPO's gold-chosen pairs, online RL's rewards) is what the
demonstrations could not. With gold demonstrations the supervised model is already about as
good as the tiny model gets, and RL after it has nothing left to show.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from trainer.demo_world.task import (
    Problem,
    gold_grade,
    make_problems,
    misconception_answer,
    wrong_answer,
)

EVAL_ROWS = 200
VALIDATION_ROWS = 200
SUPERVISED_ROWS = 2000
PREFERENCE_ROWS = 2000
PROMPT_ROWS = 10000
RATING_ROWS = 1000
SPLIT_SIZES = {
    "eval_prompts": EVAL_ROWS,
    "supervised_validation": VALIDATION_ROWS,
    "supervised": SUPERVISED_ROWS,
    "preference": PREFERENCE_ROWS,
    "prompts": PROMPT_ROWS,
    "ratings": RATING_ROWS,
}
"""Rows per file, in the order the problem list is cut. The RL prompts are many (half the
20,000 problems there are) so that a long run keeps meeting new ones: on 1,000, GRPO from the
supervised model fits them and held-out exact match falls back after 1,000 steps (bench/RESULTS.md
§9)."""

MESSAGES_EVERY = 4
"""Every 4th supervised row is in OpenAI chat shape, so both accepted shapes are exercised."""

RATING_STYLES = ("{a}", "{a}.", "{p}{a}", "The answer is {a}.", "It is {a}, I think.")
"""How a rated response writes its answer ``{a}``; ``{p}`` is the prompt, echoed."""

SLIP_RATE = 0.7
"""How often a demonstration forgets a carry or borrow, where the problem has one.

About 43% of the problems need a carry or borrow, so about 30% of the demonstrations are wrong,
each the same way (`misconception_answer`); the rest are gold.
"""

BREVITY_SPAN = 20
"""Extra characters beyond the bare answer at which brevity reaches 0."""


def split_problems(seed: int) -> dict[str, list[Problem]]:
    """Disjoint problem lists, one per file in `SPLIT_SIZES`."""
    problems = make_problems(sum(SPLIT_SIZES.values()), seed)
    splits: dict[str, list[Problem]] = {}
    start = 0
    for name, size in SPLIT_SIZES.items():
        splits[name] = problems[start : start + size]
        start += size
    return splits


def supervised_rows(
    problems: list[Problem], rng: random.Random, slip_rate: float = SLIP_RATE
) -> list[dict[str, Any]]:
    """Demonstrations: ``{"prompt", "completion"}``, every `MESSAGES_EVERY`-th as messages.

    The completion is the gold answer, except that with probability ``slip_rate`` a problem with
    a carry or borrow gets `misconception_answer` instead.
    """
    rows: list[dict[str, Any]] = []
    for index, problem in enumerate(problems):
        answer = problem.answer
        slipped = misconception_answer(problem)
        if slipped != answer and rng.random() < slip_rate:
            answer = slipped
        if index % MESSAGES_EVERY == MESSAGES_EVERY - 1:
            messages = [
                {"role": "user", "content": problem.prompt},
                {"role": "assistant", "content": answer},
            ]
            rows.append({"messages": messages})
        else:
            rows.append({"prompt": problem.prompt, "completion": answer})
    return rows


def preference_rows(problems: list[Problem], rng: random.Random) -> list[dict[str, Any]]:
    """``{"prompt", "chosen", "rejected"}``: chosen is gold; rejected grades 0.

    Half the rejected responses are plausible wrong answers, half the base model's own habit of
    echoing the question first (which the grader reads as answering with its first operand).
    """
    rows = []
    for problem in problems:
        echoed = problem.prompt + problem.answer
        # "5+0=5" echoed still starts with the answer: then only a wrong answer will do.
        if rng.random() < 0.5 and gold_grade(echoed, problem.answer) == 0.0:
            rejected = echoed
        else:
            rejected = wrong_answer(problem, rng)
        rows.append({"prompt": problem.prompt, "chosen": problem.answer, "rejected": rejected})
    return rows


def answer_rows(problems: list[Problem]) -> list[dict[str, Any]]:
    """``{"prompt", "answer"}`` for online RL, value training and evaluation."""
    return [{"prompt": problem.prompt, "answer": problem.answer} for problem in problems]


def brevity(response: str, answer: str) -> float:
    """1.0 for a bare answer, falling linearly to 0.0 at `BREVITY_SPAN` extra characters."""
    extra = max(0, len(response) - len(answer))
    return round(1.0 - min(extra, BREVITY_SPAN) / BREVITY_SPAN, 3)


def rating_rows(problems: list[Problem], rng: random.Random) -> list[dict[str, Any]]:
    """``{"prompt", "response", "scores": {"correctness", "brevity"}}`` for multi-objective RMs.

    Responses are right or wrong about equally often and written in `RATING_STYLES`, so the two
    objectives vary independently enough for separate heads to learn.
    """
    rows = []
    for problem in problems:
        shown = problem.answer if rng.random() < 0.5 else wrong_answer(problem, rng)
        style = rng.choice(RATING_STYLES)
        response = style.format(a=shown, p=problem.prompt)
        scores = {
            "correctness": gold_grade(response, problem.answer),
            "brevity": brevity(response, shown),
        }
        rows.append({"prompt": problem.prompt, "response": response, "scores": scores})
    return rows


def demo_datasets(seed: int) -> dict[str, list[dict[str, Any]]]:
    """Every demo file's rows, keyed like `SPLIT_SIZES`; the same for the same seed."""
    splits = split_problems(seed)

    def rng(name: str) -> random.Random:
        return random.Random(f"demo-{name}:{seed}")

    return {
        "supervised": supervised_rows(splits["supervised"], rng("supervised")),
        "supervised_validation": supervised_rows(
            splits["supervised_validation"], rng("supervised_validation")
        ),
        "preference": preference_rows(splits["preference"], rng("preference")),
        "prompts": answer_rows(splits["prompts"]),
        "ratings": rating_rows(splits["ratings"], rng("ratings")),
        "eval_prompts": answer_rows(splits["eval_prompts"]),
    }


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    """One compact JSON object per line, keys in insertion order."""
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The rows of a JSONL file, blank lines skipped."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]
