"""A safe evaluator for a `multi` grader's `calculate_output`, e.g. `0.7 * a + 0.3 * b`.

Only this grammar is accepted: numbers, the sub-graders' names, `+ - * / **`, unary `-`/`+`,
parentheses, and calls to FUNCTIONS with positional arguments. The tree is checked once when
the spec is parsed, so anything else (attributes, subscripts, `__import__`, comparisons,
keywords, strings) is a 400 naming the offending node, and nothing is ever passed to eval()."""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass

from services.errors import InvalidRequest


def _clip(value: float, low: float, high: float) -> float:
    return min(max(value, low), high)


# name -> (function, fewest arguments, most arguments or None for any number)
FUNCTIONS: dict[str, tuple[Callable[..., float], int, int | None]] = {
    "min": (min, 2, None),
    "max": (max, 2, None),
    "abs": (abs, 1, 1),
    "clip": (_clip, 3, 3),
    "log": (math.log, 1, 1),
    "exp": (math.exp, 1, 1),
    "sqrt": (math.sqrt, 1, 1),
}
# math.pow, unlike `**`, raises instead of returning a complex number for (-8) ** 0.5.
_BINARY: dict[type[ast.operator], Callable[[float, float], float]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.Pow: math.pow,
}
_UNARY: dict[type[ast.unaryop], Callable[[float], float]] = {
    ast.USub: operator.neg,
    ast.UAdd: operator.pos,
}
_GRAMMAR = (
    "allowed: numbers, grader names, + - * / **, unary -, parentheses and "
    + ", ".join(FUNCTIONS)
)


class FormulaError(InvalidRequest, ValueError):
    """A formula outside the grammar (at parse time) or one that fails on an item's scores."""


@dataclass(frozen=True)
class Formula:
    """A checked `calculate_output` expression."""

    text: str
    tree: ast.Expression

    def evaluate(self, scores: Mapping[str, float]) -> float:
        """The formula's value for one item's sub-grader scores; FormulaError if it fails
        (division by zero, log of a negative number, overflow, a non-finite result)."""
        try:
            value = _evaluate(self.tree.body, scores)
        except (ArithmeticError, ValueError) as exc:
            raise FormulaError(f"calculate_output failed: {exc}", param="calculate_output") from exc
        if not math.isfinite(value):
            raise FormulaError(f"calculate_output gave {value}", param="calculate_output")
        return value


def parse_formula(text: str, names: Collection[str]) -> Formula:
    """Parse and check `text`; `names` are the sub-graders a formula may refer to."""
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as exc:
        raise _rejected(f"calculate_output is not an expression: {exc.msg}") from exc
    _check(tree.body, frozenset(names))
    return Formula(text=text, tree=tree)


def _rejected(message: str) -> FormulaError:
    return FormulaError(message, param="calculate_output", code="invalid_formula")


def _check(node: ast.expr, names: frozenset[str]) -> None:
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return
    if isinstance(node, ast.Name) and node.id in names:
        return
    if isinstance(node, ast.Name):
        known = ", ".join(sorted(names))
        raise _rejected(f"calculate_output refers to unknown name {node.id!r}; graders: {known}")
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        _check(node.left, names)
        _check(node.right, names)
        return
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        _check(node.operand, names)
        return
    if isinstance(node, ast.Call):
        _check_call(node, names)
        return
    raise _rejected(
        f"calculate_output: {type(node).__name__} `{ast.unparse(node)}` is not allowed; {_GRAMMAR}"
    )


def _check_call(node: ast.Call, names: frozenset[str]) -> None:
    if not isinstance(node.func, ast.Name) or node.func.id not in FUNCTIONS:
        raise _rejected(
            f"calculate_output: call of `{ast.unparse(node.func)}` is not allowed; {_GRAMMAR}"
        )
    _, fewest, most = FUNCTIONS[node.func.id]
    if node.keywords or any(isinstance(arg, ast.Starred) for arg in node.args):
        raise _rejected(f"calculate_output: `{ast.unparse(node)}` takes positional arguments only")
    if len(node.args) < fewest or (most is not None and len(node.args) > most):
        expected = f"{fewest}" if most == fewest else f"at least {fewest}"
        raise _rejected(
            f"calculate_output: {node.func.id}() takes {expected} arguments, got {len(node.args)}"
        )
    for arg in node.args:
        _check(arg, names)


def _evaluate(node: ast.expr, scores: Mapping[str, float]) -> float:
    """Evaluate a tree that _check accepted; every number is a float, so `**` cannot build
    a huge integer."""
    if isinstance(node, ast.Constant):
        assert isinstance(node.value, int | float)
        return float(node.value)
    if isinstance(node, ast.Name):
        return float(scores[node.id])
    if isinstance(node, ast.BinOp):
        return _BINARY[type(node.op)](_evaluate(node.left, scores), _evaluate(node.right, scores))
    if isinstance(node, ast.UnaryOp):
        return _UNARY[type(node.op)](_evaluate(node.operand, scores))
    assert isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
    function = FUNCTIONS[node.func.id][0]
    return float(function(*(_evaluate(arg, scores) for arg in node.args)))
