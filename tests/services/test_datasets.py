"""Row validation per purpose, with the messages a user sees."""

from __future__ import annotations

import pytest

from services.datasets import validate_lines
from services.errors import InvalidRequest


def test_counts_rows_and_skips_blank_lines() -> None:
    lines = [b'{"prompt": "a", "completion": "b"}\n', b"\n", b'{"prompt": "c", "completion": ""}\n']
    assert validate_lines(lines, "supervised") == 2


def test_reports_at_most_five_bad_lines_with_numbers() -> None:
    lines = [b'{"prompt": "a"}\n'] * 20
    with pytest.raises(InvalidRequest) as info:
        validate_lines(lines, "supervised")
    message = info.value.message
    assert "line 1:" in message and "line 5:" in message and "line 6:" not in message
    assert '{"prompt", "completion"}' in message


def test_fine_tune_purpose_takes_supervised_and_preference_rows() -> None:
    lines = [b'{"prompt": "a", "completion": "b"}', b'{"prompt": "a", "chosen": "b", "rejected": "c"}']
    assert validate_lines(lines, "fine-tune") == 2


def test_ratings_need_numeric_scores() -> None:
    with pytest.raises(InvalidRequest) as info:
        validate_lines([b'{"prompt": "a", "response": "b", "scores": {"x": "high"}}'], "ratings")
    assert "scores.x" in info.value.message


def test_prompts_keep_extra_fields_and_reject_non_objects() -> None:
    assert validate_lines([b'{"prompt": "a", "answer": "1", "topic": "math"}'], "prompts") == 1
    with pytest.raises(InvalidRequest) as info:
        validate_lines([b'["prompt"]'], "prompts")
    assert "expected a JSON object, got list" in info.value.message
