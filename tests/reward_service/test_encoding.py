"""The truncation policy: the response's start and the prompt's end (and its <bos>) survive."""

from __future__ import annotations

from reward_service.encoding import truncate

BOS = 1


def test_items_that_fit_are_untouched() -> None:
    encoded = truncate([BOS, 5, 6], [7, 8], limit=5, bos_token_id=BOS)
    assert encoded.input_ids == [BOS, 5, 6, 7, 8] and not encoded.truncated


def test_long_prompt_keeps_its_end_and_bos() -> None:
    encoded = truncate([BOS, *range(10, 30)], [7, 8], limit=8, bos_token_id=BOS)
    assert encoded.input_ids == [BOS, 25, 26, 27, 28, 29, 7, 8] and encoded.truncated


def test_long_response_keeps_its_start() -> None:
    encoded = truncate([BOS, 5], list(range(100, 120)), limit=6, bos_token_id=BOS)
    assert encoded.input_ids == [BOS, 5, 100, 101, 102, 103]


def test_both_long_split_the_limit_in_half() -> None:
    encoded = truncate(list(range(10, 30)), list(range(100, 120)), limit=6, bos_token_id=BOS)
    assert encoded.input_ids == [27, 28, 29, 100, 101, 102]
