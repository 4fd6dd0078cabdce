"""A calculator tool: arithmetic on numbers, without ``eval``.

A model's tool call is untrusted text, so the expression is parsed (``ast``) and only numbers, ``+ - * / // % **``,
unary signs and parentheses are evaluated; anything else is an error the episode sees. Powers are bounded so that a
call such as ``9**9**9`` fails at once instead of running until the tool's time limit.
"""

from __future__ import annotations

import ast
import operator
from typing import Callable

_BINARY: dict[type, Callable[[float, float], float]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow,
}
_UNARY: dict[type, Callable[[float], float]] = {ast.UAdd: operator.pos, ast.USub: operator.neg}
#: the largest exponent and the largest magnitude of a power's base that a call may use
MAX_EXPONENT, MAX_POWER_BASE = 64, 10**12


def _value(node: ast.AST) -> float:
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
        return node.value
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_value(node.operand))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _value(node.left), _value(node.right)
        if isinstance(node.op, ast.Pow) and (abs(right) > MAX_EXPONENT or abs(left) > MAX_POWER_BASE):
            raise ValueError(f"power too large: {left} ** {right}")
        return _BINARY[type(node.op)](left, right)
    raise ValueError(f"only numbers, + - * / // % ** and parentheses are allowed, got {ast.unparse(node)!r}")


def calc(expression: str) -> str:
    """Evaluate an arithmetic expression.

    Args:
        expression: numbers with + - * / // % ** and parentheses, e.g. "17 * 23".

    Returns:
        The value: an integer where the result is whole ("391"), else a decimal rounded to 10 places.
    """
    try:  # a bare number may arrive as an int or float (calc(391), {"expression": 17})
        tree = ast.parse(str(expression).strip().replace("×", "*").replace("^", "**"), mode="eval")
    except SyntaxError:
        raise ValueError(f"not an arithmetic expression: {expression!r}") from None
    value = _value(tree.body)
    if not isinstance(value, (int, float)):  # (-8) ** 0.5 is complex
        raise ValueError(f"{expression!r} has no real value")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value) if isinstance(value, int) else f"{value:.12g}"


__all__ = ["calc"]
