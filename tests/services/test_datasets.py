"""Row validation per purpose, the shapes a file is found to hold, and the messages a user
sees."""

from __future__ import annotations

import json
from typing import Any

import pytest

from services.datasets import PURPOSE_SHAPES, SHAPES, FileRows, validate_lines
from services.errors import InvalidRequest

USER, ASSISTANT = {"role": "user", "content": "1+1="}, {"role": "assistant", "content": "2"}
WRONG = {"role": "assistant", "content": "3"}
TOOLS = [{"type": "function", "function": {"name": "add", "parameters": {"type": "object"}}}]
ROWS: dict[str, dict[str, Any]] = {
    "chat": {"messages": [USER, ASSISTANT]},
    "prompt_completion": {"prompt": "1+1=", "completion": "2"},
    "conversational_prompt_completion": {"prompt": [USER], "completion": [ASSISTANT]},
    "text": {"text": "1+1=2"},
    "preference": {"prompt": "1+1=", "chosen": "2", "rejected": "3"},
    "conversational_preference": {"prompt": [USER], "chosen": [ASSISTANT], "rejected": [WRONG]},
    "openai_preference": {"input": {"messages": [USER]}, "preferred_output": [ASSISTANT],
                          "non_preferred_output": [WRONG]},
    "prompt_only": {"prompt": "1+1=", "answer": "2"},
    "conversational_prompt_only": {"prompt": [USER], "answer": "2"},
    "openai_rft": {"messages": [USER], "tools": TOOLS, "answer": "2", "topic": "sums"},
    "ratings": {"prompt": "1+1=", "response": "2", "scores": {"correct": 1.0}},
}
"""One row of every shape; the tests of the api and the trainer use them too."""


def lines(*rows: dict[str, Any]) -> list[bytes]:
    return [json.dumps(row).encode() + b"\n" for row in rows]


def refusal(rows: list[bytes], purpose: str) -> str:
    with pytest.raises(InvalidRequest) as info:
        validate_lines(rows, purpose)
    assert info.value.param == "file"
    return info.value.message


def test_counts_rows_and_skips_blank_lines() -> None:
    rows = [b'{"prompt": "a", "completion": "b"}\n', b"\n", b'{"prompt": "c", "completion": ""}\n']
    assert validate_lines(rows, "supervised") == FileRows(2, ("prompt_completion",))


def test_every_shape_is_found_under_each_purpose_that_takes_it() -> None:
    assert set(ROWS) == set(SHAPES)
    for purpose, names in PURPOSE_SHAPES.items():
        for name in names:
            assert validate_lines(lines(ROWS[name]), purpose).shapes == (name,), (purpose, name)


def test_a_file_may_mix_the_shapes_of_one_kind() -> None:
    """The demo world's supervised file: prompt/completion rows, every 4th a chat."""
    found = validate_lines(lines(ROWS["prompt_completion"], ROWS["chat"], ROWS["text"]),
                           "fine-tune")
    assert found == FileRows(3, ("chat", "prompt_completion", "text"))  # in SHAPES order


def test_rows_of_several_kinds_are_refused_with_their_lines() -> None:
    message = refusal(lines(ROWS["chat"], ROWS["prompt_completion"], ROWS["preference"],
                            ROWS["openai_rft"]), "fine-tune")
    assert "line 3: a preference row (preference), but line 1 is a supervised row (chat)" \
        in message
    assert "line 4: a prompts row (openai_rft)" in message and "line 2" not in message
    assert "one kind" in message


def test_reports_at_most_five_bad_lines_with_numbers() -> None:
    message = refusal([b'{"prompt": "a"}\n'] * 20, "supervised")
    assert "line 1:" in message and "line 5:" in message and "line 6:" not in message
    assert "completion: Field required (as prompt_completion)" in message
    assert 'prompt_completion {"prompt", "completion"}' in message


def test_a_chat_and_an_rft_row_are_told_apart_by_their_last_turn() -> None:
    """Under fine-tune, messages ending with the user's turn are a prompt (RFT), with the
    assistant's a demonstration; either is refused under the other's rules with the reason."""
    asked = {"messages": [USER]}
    assert validate_lines(lines(asked), "fine-tune").shapes == ("openai_rft",)
    message = refusal(lines(asked), "supervised")
    assert "the last message must be the assistant's" in message and "got role 'user'" in message
    message = refusal(lines({**ROWS["chat"], "answer": "2"}), "fine-tune")
    assert "answer: Extra inputs are not permitted (as chat)" in message
    assert "the last message must be the user's" in message and "(as openai_rft)" in message


def test_rft_rows_reserve_tools_and_keep_every_other_field() -> None:
    message = refusal(lines({"messages": [USER], "tools": "add"}), "fine-tune")
    assert "tools: Input should be a valid list" in message
    assert validate_lines(lines(ROWS["openai_rft"]), "prompts").shapes == ("openai_rft",)


def test_conversational_pairs_must_differ_and_end_with_the_assistant() -> None:
    same = {"prompt": [USER], "chosen": [ASSISTANT], "rejected": [ASSISTANT]}
    assert "chosen and rejected are identical" in refusal(lines(same), "preference")
    asked = {"prompt": [USER], "chosen": [ASSISTANT], "rejected": [USER]}
    message = refusal(lines(asked), "preference")
    assert "rejected: Value error, the last message must be the assistant's" in message


def test_ratings_need_numeric_scores() -> None:
    message = refusal([b'{"prompt": "a", "response": "b", "scores": {"x": "high"}}'], "ratings")
    assert "scores.x" in message


def test_prompts_keep_extra_fields_and_reject_non_objects() -> None:
    found = validate_lines([b'{"prompt": "a", "answer": "1", "topic": "math"}'], "prompts")
    assert found == FileRows(1, ("prompt_only",))
    assert "expected a JSON object, got list" in refusal([b'["prompt"]'], "prompts")
