"""Graders in OpenAI's shapes (`string_check`, `text_similarity`, `python`, `score_model`,
`multi`) for the reward service. Parse a spec with parse_grader_spec, score a batch with
grade_batch. Imports neither torch nor FastAPI."""

from reward_service.graders.formula import FUNCTIONS, Formula, FormulaError, parse_formula
from reward_service.graders.grade import GRADERS, GradeContext, ScoreModelFn, grade_batch
from reward_service.graders.outcome import GradeOutcome
from reward_service.graders.sandbox import SandboxLimits, run_python_grader
from reward_service.graders.similarity import METRICS, UNSUPPORTED_METRICS
from reward_service.graders.specs import (
    GraderSpec,
    MultiGrader,
    PythonGrader,
    ScoreModelGrader,
    StringCheckGrader,
    SubGraderSpec,
    TextSimilarityGrader,
    parse_grader_spec,
)
from reward_service.graders.templates import TemplateError, check_template, render_template

__all__ = [
    "FUNCTIONS",
    "GRADERS",
    "METRICS",
    "UNSUPPORTED_METRICS",
    "Formula",
    "FormulaError",
    "GradeContext",
    "GradeOutcome",
    "GraderSpec",
    "MultiGrader",
    "PythonGrader",
    "SandboxLimits",
    "ScoreModelFn",
    "ScoreModelGrader",
    "StringCheckGrader",
    "SubGraderSpec",
    "TemplateError",
    "TextSimilarityGrader",
    "check_template",
    "grade_batch",
    "parse_formula",
    "parse_grader_spec",
    "render_template",
    "run_python_grader",
]
