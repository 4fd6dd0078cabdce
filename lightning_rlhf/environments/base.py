"""The environment interface: what answers the model between its turns in a multi-turn rollout.

An episode starts from ``reset(record)``'s messages; after each model turn the rollout calls ``step(messages)``
with the whole conversation so far. ``step`` returns the messages to append (``None``: the episode is over), an
optional reward of its own, and whether the episode is done. ``render`` turns an environment message into the
text that enters the episode after the model's turn; only the model's own tokens are trained on.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

from lightning_rlhf.environments.tags import CALL_END, ToolCall, last_call, render_result
from lightning_rlhf.environments.tools import Toolbox

Message = dict[str, Any]
StepResult = tuple["list[Message] | None", "float | None", bool]


class Environment:
    """Subclass and implement :meth:`step` (and :meth:`reset` where the record is not a plain prompt)."""

    #: texts that end a model turn early so that :meth:`step` can answer (a tool call's closing tag)
    stop_strings: tuple[str, ...] = ()

    def reset(self, record: Mapping[str, Any]) -> list[Message]:
        """The episode's first messages for ``record`` (a data row with a ``prompt``)."""
        return [{"role": "user", "content": record["prompt"]}]

    def step(self, messages: list[Message]) -> StepResult:
        """React to the model's last turn (``messages[-1]``, role ``assistant``)."""
        raise NotImplementedError(f"{type(self).__name__}.step: subclass Environment and return (messages to "
                                  f"append or None, a reward or None, done)")

    def render(self, message: Message) -> str:
        """The text of an environment message as it enters the episode after the model's turn."""
        return str(message["content"])


class ToolEnvironment(Environment):
    """Tools the model calls with the tag protocol (:mod:`~lightning_rlhf.environments.tags`).

    The episode is over when a model turn calls no tool.

    Args:
        tools: plain Python functions (or import paths ``module:function``).
        timeout_s: seconds one tool call may run (:class:`~lightning_rlhf.environments.tools.Toolbox`).
        max_output_chars: longest tool result; longer ones are cut.
    """

    stop_strings = (CALL_END,)

    def __init__(self, tools: Sequence[Callable[..., Any] | str], timeout_s: float = 5.0,
                 max_output_chars: int = 1000) -> None:
        from lightning_rlhf.rewards.resolve import import_callable

        functions = [import_callable(t, "tool") if isinstance(t, str) else t for t in tools]
        self.toolbox = Toolbox(functions, timeout_s, max_output_chars)
        self._parameters = {name: self.toolbox.parameters(name) for name in self.toolbox.tools}

    def last_call(self, text: str) -> ToolCall | None:
        """The turn's last tool call (a ``problem`` where it is malformed), or None: the turn calls no tool."""
        return last_call(text, self._parameters)

    def step(self, messages: list[Message]) -> StepResult:
        call = self.last_call(str(messages[-1]["content"]))
        if call is None:
            return None, None, True
        if call.problem is not None:
            return [{"role": "tool", "name": call.name, "content": f"error: {call.problem}", "error": True}], None, False
        result = self.toolbox.call(call.name, call.args, call.kwargs)
        return [{"role": "tool", "name": call.name, "content": result.text, "error": result.error}], None, False

    def render(self, message: Message) -> str:
        return render_result(str(message["content"]))
