"""The tag protocol for tool calls, for models whose chat template has no tool format (SmolLM2's has none).

The model writes ``<tool>calc(17*23)</tool>``; its turn stops at ``</tool>``; the environment appends
``<result>391</result>`` on its own line to the episode and the model goes on in the same turn. Arguments are Python literals
(``lookup("Paris", limit=2)``); a tool with one parameter also takes the raw text between the parentheses
(``calc(17*23)`` passes ``"17*23"``).
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field
from typing import Any, Sequence

#: where a model turn that calls a tool stops
CALL_END = "</tool>"
_CALL = re.compile(r"<tool>\s*(.*?)\s*</tool>", re.DOTALL)
_NAMED = re.compile(r"([A-Za-z_]\w*)\s*\((.*)\)\s*$", re.DOTALL)


@dataclass(frozen=True)
class ToolCall:
    """A parsed call: ``name(*args, **kwargs)``, or a ``problem`` saying why the text is not a call."""

    name: str
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    problem: str | None = None


def last_call(text: str, parameters: dict[str, Sequence[str]]) -> ToolCall | None:
    """The last ``<tool>...</tool>`` of ``text`` parsed against the tools' parameter names, or None without one."""
    found = _CALL.findall(text)
    if not found:
        return None
    body = found[-1]
    named = _NAMED.match(body)
    if named is None:
        return ToolCall("", problem=f"{body!r} is not a call; write <tool>name(arguments)</tool>")
    name, inner = named.group(1), named.group(2).strip()
    if name not in parameters:
        return ToolCall(name, problem=f"no tool named {name!r}; the tools are {sorted(parameters)}")
    try:
        call = ast.parse(f"f({inner})", mode="eval").body
        assert isinstance(call, ast.Call)
        args = tuple(ast.literal_eval(a) for a in call.args)
        kwargs = {k.arg: ast.literal_eval(k.value) for k in call.keywords if k.arg is not None}
        return ToolCall(name, args, kwargs)
    except (SyntaxError, ValueError, TypeError, AssertionError, RecursionError, MemoryError):
        if len(parameters[name]) == 1:  # one parameter: the text itself ("calc(17*23)")
            return ToolCall(name, (inner.strip("\"'"),))
        return ToolCall(name, problem=f"the arguments of {name} must be Python literals, got {inner!r}")


def render_result(text: str) -> str:
    """How a tool's answer enters the episode: on its own line. The newlines keep the token boundaries of a
    demonstration written as one text (``...</tool>\n<result>391</result>\n391``) equal to the episode's, whose
    parts are tokenized apart: without them a BPE tokenizer merges ``</tool><result>`` into a ``><`` token that a
    turn stopped at ``</tool>`` never ends with (SmolLM2's does)."""
    return f"\n<result>{text}</result>\n"
