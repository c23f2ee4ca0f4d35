"""Graders without user code: specs, templates, similarity metrics, score_model, multi.

Expected values are worked by hand in the comments from each library's documented formula."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest

from reward_service.graders import (
    GRADERS,
    FormulaError,
    GradeOutcome,
    TemplateError,
    grade_batch,
    parse_formula,
    parse_grader_spec,
    render_template,
)
from services.errors import InvalidRequest, NotFound

ANSWER = "{{item.answer}}"
OUTPUT = "{{sample.output_text}}"
DEMO_ITEMS = [{"prompt": "2+2=", "answer": "4"}, {"prompt": "3+5=", "answer": "8"}]


def string_check(operation: str, reference: str = ANSWER) -> dict[str, object]:
    return {"type": "string_check", "name": "exact", "input": OUTPUT,
            "reference": reference, "operation": operation}


def similarity(metric: str) -> dict[str, object]:
    return {"type": "text_similarity", "name": "sim", "input": OUTPUT,
            "reference": ANSWER, "evaluation_metric": metric}


def scores(spec: dict[str, object], samples: list[str], items: list[dict], **kwargs: Any) -> list:
    outcomes = grade_batch(parse_grader_spec(spec), samples, items, **kwargs)
    return [o.score if o.error is None else o.error for o in outcomes]


# --- string_check -------------------------------------------------------------------------

def test_string_check_on_the_demo_arithmetic() -> None:
    assert scores(string_check("eq"), ["4", "7"], DEMO_ITEMS) == [1.0, 0.0]
    assert scores(string_check("ne"), ["4", "7"], DEMO_ITEMS) == [0.0, 1.0]


def test_like_is_contains_and_ilike_ignores_case() -> None:
    items = [{"answer": "Paris"}] * 3
    samples = ["It is Paris.", "it is paris", "Lyon"]
    assert scores(string_check("like"), samples, items) == [1.0, 0.0, 0.0]
    assert scores(string_check("ilike"), samples, items) == [1.0, 1.0, 0.0]
    # Not SQL: % is an ordinary character.
    assert scores(string_check("like", "P%"), ["Paris"], [{}]) == [0.0]


# --- text_similarity ----------------------------------------------------------------------

HYPOTHESIS, REFERENCE = "the cat sat on the mat", "the cat sat on a mat"


@pytest.mark.parametrize(("metric", "expected"), [
    # n-gram matches of hypothesis in reference: 1-grams 5/6, 2-grams 3/5, 3-grams 2/4,
    # 4-grams 1/3; equal lengths so brevity penalty 1; no zero counts so no smoothing.
    ("bleu", (5 / 6 * 3 / 5 * 2 / 4 * 1 / 3) ** 0.25),
    # GLEU = min(precision, recall) over all 1..4-grams: 11 matches of 18 on both sides.
    ("gleu", 11 / 18),
    # ROUGE F-measure: precision = recall = overlap / 6 unigrams (5), / 5 bigrams (3),
    # LCS "the cat sat on mat" / 6 (5).
    ("rouge_1", 5 / 6),
    ("rouge_2", 3 / 5),
    ("rouge_l", 5 / 6),
])
def test_similarity_metrics_match_hand_computed_values(metric: str, expected: float) -> None:
    [score] = scores(similarity(metric), [HYPOTHESIS], [{"answer": REFERENCE}])
    assert score == pytest.approx(expected)


def test_fuzzy_match_is_normalized_indel_similarity() -> None:
    # kitten/sitting: longest common subsequence "ittn" (4), indel distance 6 + 7 - 2*4 = 5,
    # similarity 1 - 5 / 13 = 8/13.
    assert scores(similarity("fuzzy_match"), ["kitten"], [{"answer": "sitting"}]) == [
        pytest.approx(8 / 13)
    ]


@pytest.mark.parametrize("metric", ["fuzzy_match", "bleu", "gleu", "rouge_1", "rouge_2", "rouge_l"])
def test_identical_text_scores_one(metric: str) -> None:
    assert scores(similarity(metric), [HYPOTHESIS], [{"answer": HYPOTHESIS}]) == [
        pytest.approx(1.0)
    ]


@pytest.mark.parametrize(("metric", "why"), [("meteor", "WordNet"), ("cosine", "embedding")])
def test_unsupported_metrics_say_why(metric: str, why: str) -> None:
    with pytest.raises(InvalidRequest, match=why) as raised:
        parse_grader_spec(similarity(metric))
    assert raised.value.param == "evaluation_metric"


# --- templates ----------------------------------------------------------------------------

def test_render_nested_fields_indexes_and_whitespace() -> None:
    item = {"meta": {"answer": "42", "tags": ["a", "b"]}, "n": 3, "flags": {"ok": True}}
    template = "{{ sample.output_text }}|{{item.meta.answer}}|{{item.meta.tags.1}}|{{item.n}}"
    assert render_template(template, {"output_text": "x"}, item) == "x|42|b|3"
    assert render_template("{{item.flags}}", {}, item) == '{"ok": true}'


def test_missing_field_names_it() -> None:
    with pytest.raises(TemplateError, match=r"item.meta has no field 'answer'"):
        render_template("{{item.meta.answer}}", {}, {"meta": {}})


def test_missing_field_fails_only_its_item() -> None:
    items = [{"answer": "4"}, {"question": "no answer here"}, {"answer": "8"}]
    result = scores(string_check("eq"), ["4", "4", "8"], items)
    assert result[0] == 1.0 and result[2] == 1.0
    assert "item has no field 'answer'" in result[1]


@pytest.mark.parametrize("reference", ["{{answer}}", "{{item}}", "{{sample.text}}", "{{item..a}}"])
def test_malformed_references_are_rejected_when_parsing(reference: str) -> None:
    with pytest.raises(InvalidRequest, match="template reference") as raised:
        parse_grader_spec(string_check("eq", reference))
    assert raised.value.param == "reference"


# --- spec parsing -------------------------------------------------------------------------

@pytest.mark.parametrize(("spec", "message", "param"), [
    ({**string_check("eq"), "operaton": "eq"}, "Extra inputs are not permitted", "operaton"),
    ({"type": "regex", "name": "r"}, "does not match any of the expected tags", None),
    ({"type": "python", "name": "p", "source": "def grade(s, i:\n"}, "does not compile", "source"),
    ({"type": "python", "name": "p", "source": "def score(s, i): return 1"},
     "must define grade", "source"),
    ({"type": "score_model", "name": "s", "model": "rm", "range": [1, 0]}, "low < high", "range"),
    ({"type": "multi", "name": "m", "graders": {"not ok": string_check("eq")},
      "calculate_output": "1"}, "must be an identifier", None),
    ({"type": "multi", "name": "m", "calculate_output": "a", "graders": {"a": {
        "type": "multi", "name": "inner", "graders": {"b": string_check("eq")},
        "calculate_output": "b"}}}, "does not match any of the expected tags", "graders.a"),
])
def test_bad_specs_are_invalid_requests(spec: dict, message: str, param: str | None) -> None:
    with pytest.raises(InvalidRequest, match=message) as raised:
        parse_grader_spec(spec)
    assert raised.value.param == param
    assert raised.value.code == "invalid_grader"


def test_python_image_tag_is_accepted() -> None:
    spec = parse_grader_spec({"type": "python", "name": "p", "image_tag": "2025-05-08",
                              "source": "def grade(sample, item):\n    return 1.0\n"})
    assert spec.type == "python"


def test_every_spec_type_has_a_grader() -> None:
    assert set(GRADERS) == {"string_check", "text_similarity", "python", "score_model", "multi"}


def test_samples_and_items_must_pair_up() -> None:
    with pytest.raises(InvalidRequest, match="same length"):
        grade_batch(parse_grader_spec(string_check("eq")), ["4"], DEMO_ITEMS)


def test_importing_graders_imports_neither_torch_nor_fastapi() -> None:
    code = ("import sys, reward_service.graders\n"
            "print(sorted({'torch', 'fastapi'} & set(sys.modules)))")
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True).stdout
    assert output.strip() == "[]"


# --- score_model --------------------------------------------------------------------------

class LengthScorer:
    """A stand-in reward model: the response's length; records its calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[str], list[str]]] = []

    def __call__(self, model: str, prompts: list[str], responses: list[str]) -> list[float]:
        self.calls.append((model, prompts, responses))
        return [float(len(response)) for response in responses]


def score_model(**extra: object) -> dict[str, object]:
    return {"type": "score_model", "name": "rm", "model": "ft:tiny:rm:1", **extra}


def test_score_model_calls_the_model_once_per_batch() -> None:
    scorer = LengthScorer()
    items = [{"prompt": "p1"}, {"answer": "no prompt"}, {"prompt": "p3"}]
    result = scores(score_model(), ["abc", "x", "abcdef"], items, score_model_fn=scorer)
    assert result[0] == 3.0 and result[2] == 6.0
    assert "item has no field 'prompt'" in result[1]
    assert scorer.calls == [("ft:tiny:rm:1", ["p1", "p3"], ["abc", "abcdef"])]


def test_score_model_input_template_and_range() -> None:
    spec = score_model(input="{{sample.output_text}} / {{item.answer}}", range=[0, 8])
    result = scores(spec, ["ab", "abcdef"], [{"prompt": "p", "answer": "4"}] * 2,
                    score_model_fn=LengthScorer())
    assert result == [6.0, 8.0]  # "ab / 4" has 6 characters; 10 is clipped to 8


def test_score_model_failures_become_item_errors() -> None:
    def broken(model: str, prompts: list[str], responses: list[str]) -> list[float]:
        raise RuntimeError("CUDA out of memory")

    def short(model: str, prompts: list[str], responses: list[str]) -> list[float]:
        return [1.0]

    items = [{"prompt": "p"}] * 2
    assert scores(score_model(), ["a", "b"], items) == [
        "score_model graders are not available here"] * 2
    assert "RuntimeError: CUDA out of memory" in scores(
        score_model(), ["a", "b"], items, score_model_fn=broken)[0]
    assert "returned 1 scores for 2 items" in scores(
        score_model(), ["a", "b"], items, score_model_fn=short)[1]


def test_score_model_domain_errors_reach_the_caller() -> None:
    def unknown(model: str, prompts: list[str], responses: list[str]) -> list[float]:
        raise NotFound(f"model {model!r} is not registered")

    with pytest.raises(NotFound):
        scores(score_model(), ["a"], [{"prompt": "p"}], score_model_fn=unknown)


# --- multi and its formula ----------------------------------------------------------------

def multi(formula: str) -> dict[str, object]:
    return {"type": "multi", "name": "m", "calculate_output": formula,
            "graders": {"correctness": string_check("eq"), "similarity": similarity("fuzzy_match")}}


def test_multi_combines_sub_graders_and_reports_parts() -> None:
    spec = parse_grader_spec(multi("0.7 * correctness + 0.3 * similarity"))
    right, wrong = grade_batch(spec, ["sitting", "kitten"], [{"answer": "sitting"}] * 2)
    assert right == GradeOutcome(score=1.0, parts={"correctness": 1.0, "similarity": 1.0})
    # correctness 0, similarity 8/13 (see the fuzzy_match test): 0.3 * 8/13.
    assert wrong.score == pytest.approx(0.3 * 8 / 13)
    assert wrong.parts == {"correctness": 0.0, "similarity": pytest.approx(8 / 13)}


def test_multi_item_errors_name_the_sub_grader_or_formula() -> None:
    spec = parse_grader_spec(multi("similarity / correctness"))
    missing, zero = grade_batch(spec, ["x", "kitten"], [{}, {"answer": "sitting"}])
    assert missing.error is not None and missing.error.startswith("grader 'correctness': item has")
    assert zero.error == "calculate_output failed: float division by zero"
    assert zero.parts == {"correctness": 0.0, "similarity": pytest.approx(8 / 13)}


def test_formula_functions_worked_by_hand() -> None:
    formula = parse_formula("clip(2 * a - 0.5, 0, 1) + max(a, b) ** 2 - -sqrt(b)", ["a", "b"])
    # a = 0.6, b = 0.25: clip(0.7) = 0.7; 0.6 ** 2 = 0.36; sqrt(0.25) = 0.5 -> 1.56
    assert formula.evaluate({"a": 0.6, "b": 0.25}) == pytest.approx(1.56)
    formula = parse_formula("min(abs(a - 1), 0.5, exp(log(b)))", ["a", "b"])
    assert formula.evaluate({"a": 0.9, "b": 0.3}) == pytest.approx(0.1)
    with pytest.raises(FormulaError, match="math domain error"):
        parse_formula("log(a)", ["a"]).evaluate({"a": 0.0})
    with pytest.raises(FormulaError, match="failed"):
        parse_formula("10 ** 10 ** 10", []).evaluate({})  # floats overflow, no huge int


@pytest.mark.parametrize(("formula", "offending"), [
    ("__import__('os')", "call of `__import__`"),
    ("a.real", "Attribute `a.real`"),
    ("().__class__", "Attribute `().__class__`"),
    ("a[0]", "Subscript `a[0]`"),
    ("a + c", "unknown name 'c'"),
    ("a < 1", "Compare `a < 1`"),
    ("a if a else 1", "IfExp"),
    ("'1'", "Constant `'1'`"),
    ("True + a", "Constant `True`"),
    ("(lambda: 1)()", "call of `lambda: 1`"),
    ("min(a)", "min() takes at least 2 arguments, got 1"),
    ("max(a, a, key=abs)", "positional arguments only"),
    ("a +", "not an expression"),
    ("min + 1", "unknown name 'min'"),
])
def test_formula_rejects_anything_outside_the_grammar(formula: str, offending: str) -> None:
    with pytest.raises(FormulaError) as raised:
        parse_formula(formula, ["a"])
    assert offending in raised.value.message
    assert raised.value.param == "calculate_output"
