"""Small JSONL datasets for tests, from the demo task's generator."""

from __future__ import annotations

import json

from trainer.demo_world.task import make_problems


def jsonl(rows: list[dict]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def supervised_rows(n: int, seed: int = 0) -> list[dict]:
    return [{"prompt": p.prompt, "completion": p.answer} for p in make_problems(n, seed)]
