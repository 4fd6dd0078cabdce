"""Tools as plain Python functions, called so that nothing a tool does can crash or stall a rank.

A rollout on every rank of a data-parallel job must finish for the next collective to start, so a tool call is
bounded: it runs in a worker thread and is abandoned after ``timeout_s`` (the thread cannot be killed; a daemon
thread, it ends with the process), its exception becomes an error text, and its output is cut to
``max_output_chars``. The episode sees every failure as a tool message and goes on.
"""

from __future__ import annotations

import inspect
import threading
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from lightning_rlhf.data.tool_schemas import tool_schema


@dataclass(frozen=True)
class ToolResult:
    """What one call gave the episode: ``text``, and ``error`` (raised, timed out, unknown tool, bad arguments)."""

    text: str
    error: bool = False
    truncated: bool = False


class Toolbox:
    """Named tools with bounded calls.

    Args:
        tools: plain functions; each is called by its ``__name__``.
        timeout_s: seconds one call may run before the episode gets a timeout error instead of its result.
        max_output_chars: longest result text; longer ones are cut and marked.
    """

    def __init__(self, tools: Sequence[Callable[..., Any]], timeout_s: float = 5.0,
                 max_output_chars: int = 1000) -> None:
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        if max_output_chars < 1:
            raise ValueError(f"max_output_chars must be >= 1, got {max_output_chars}")
        self.tools = {tool.__name__: tool for tool in tools}
        if len(self.tools) != len(tools):
            raise ValueError(f"two tools share a name: {[tool.__name__ for tool in tools]}")
        self.timeout_s = timeout_s
        self.max_output_chars = max_output_chars

    def schemas(self) -> list[dict[str, Any]]:
        """Every tool's JSON schema (:func:`tool_schema`), for a chat template's ``tools=``."""
        return [tool_schema(tool) for tool in self.tools.values()]

    def parameters(self, name: str) -> list[str]:
        """The parameter names of tool ``name`` (empty for an unknown one)."""
        tool = self.tools.get(name)
        return list(inspect.signature(tool).parameters) if tool is not None else []

    def call(self, name: str, args: Sequence[Any] = (), kwargs: Mapping[str, Any] | None = None) -> ToolResult:
        """Run tool ``name``; never raises: every failure is a :class:`ToolResult` with ``error=True``."""
        tool = self.tools.get(name)
        if tool is None:
            return ToolResult(f"error: no tool named {name!r}; the tools are {sorted(self.tools)}", error=True)
        box: dict[str, Any] = {}

        def run() -> None:
            try:
                box["value"] = tool(*args, **dict(kwargs or {}))
            except BaseException as exc:  # noqa: BLE001 - a tool's failure is the episode's, not the rank's
                box["error"] = exc

        worker = threading.Thread(target=run, name=f"tool-{name}", daemon=True)
        worker.start()
        worker.join(self.timeout_s)
        if worker.is_alive():
            return ToolResult(f"error: {name} did not finish within {self.timeout_s:g} s", error=True)
        if "error" in box:
            exc = box["error"]
            return self._cut(f"error: {name} raised {type(exc).__name__}: {exc}", error=True)
        return self._cut(str(box.get("value")))

    def _cut(self, text: str, error: bool = False) -> ToolResult:
        if len(text) <= self.max_output_chars:
            return ToolResult(text, error)
        marker = f"... [cut at {self.max_output_chars} of {len(text)} characters]"
        return ToolResult(text[: self.max_output_chars] + marker, error, truncated=True)
