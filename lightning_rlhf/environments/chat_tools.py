"""Tools in the model's own format, for models whose chat template renders ``tools=`` and that call them the
Hermes way (Qwen 2.5 / 3, Hermes): ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``.

A model trained on tool use knows the format its chat template gives it: the tools' JSON schemas in the prompt,
calls in its own syntax, results as a ``tool`` message; training it on another protocol would teach it a second
one. (Llama 3.1's bare-JSON calls, ``{"name": ..., "parameters": ...}`` with no closing tag, are not this format and
are not parsed here.) So the prompt is rendered with ``tools=`` (``RLHFDataModule(tools=)``),
a turn stops at ``</tool_call>``, and a result enters the episode as exactly the text the template puts after the
assistant's call: its end of turn, the ``tool`` message and the next assistant header. An episode is then token for
token the conversation the template renders, which is what the model saw in its own training.
"""

from __future__ import annotations

import json
import re
from typing import Any, Callable, Sequence

from lightning_rlhf.data.tool_schemas import check_renders_tools
from lightning_rlhf.environments.base import Message, ToolEnvironment
from lightning_rlhf.environments.tags import ToolCall

CALL_END = "</tool_call>"
_CALL = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.DOTALL)
#: stands for the model's call when the template renders the text that follows it
_PLACEHOLDER = "TOOLCALLPLACEHOLDER"


class ChatTemplateTools(ToolEnvironment):
    """Tools called in the chat template's format (module docstring).

    Args:
        tools: plain Python functions (or import paths ``module:function``); called with the JSON ``arguments``.
        tokenizer: the policy's tokenizer, whose chat template renders the tools and their results.
        timeout_s: seconds one tool call may run.
        max_output_chars: longest tool result; longer ones are cut.
    """

    stop_strings = (CALL_END,)

    def __init__(self, tools: Sequence[Callable[..., Any] | str], tokenizer: Any, timeout_s: float = 5.0,
                 max_output_chars: int = 1000) -> None:
        super().__init__(tools, timeout_s, max_output_chars)
        self.tokenizer = tokenizer
        self.schemas = self.toolbox.schemas()
        check_renders_tools(tokenizer, self.schemas)
        try:  # a template that renders tools= but refuses a tool message fails here, not mid-rollout
            self.render({"role": "tool", "name": next(iter(self.toolbox.tools)), "content": "0"})
        except Exception as err:
            raise ValueError(f"the chat template of {getattr(tokenizer, 'name_or_path', '')} renders tools= but not a "
                             f"tool message after an assistant call ({type(err).__name__}: {err}); use the tag "
                             f"protocol (EpisodeArgs(protocol='tags'))") from None

    def last_call(self, text: str) -> ToolCall | None:
        found = _CALL.findall(text)
        return _parse(found[-1], self.toolbox.tools) if found else None

    def render(self, message: Message) -> str:
        """What the template writes after an assistant turn that ends in a call: the end of that turn, the tool
        message and the next assistant header."""
        conversation = [{"role": "user", "content": "q"}, {"role": "assistant", "content": _PLACEHOLDER},
                        {"role": "tool", "name": message.get("name", ""), "content": str(message["content"])}]
        text = self.tokenizer.apply_chat_template(conversation, tools=self.schemas, tokenize=False,
                                                  add_generation_prompt=True)
        return text[text.index(_PLACEHOLDER) + len(_PLACEHOLDER):]  # the call; the result may echo model text


def _parse(body: str, tools: dict[str, Any]) -> ToolCall:
    """One call's JSON body as a :class:`ToolCall` (keyword arguments; a ``problem`` where it is not a call)."""
    try:
        call = json.loads(body)
    except (ValueError, RecursionError) as err:  # JSONDecodeError is a ValueError; "[[[[..." recurses
        why = err.msg if isinstance(err, json.JSONDecodeError) else type(err).__name__
        return ToolCall("", problem=f"the call is not JSON ({why}); write <tool_call>{{\"name\": ..., \"arguments\": "
                                    f"{{...}}}}</tool_call>")
    name = call.get("name") if isinstance(call, dict) else None
    arguments = call.get("arguments", {}) if isinstance(call, dict) else None
    if isinstance(arguments, str):  # some templates serialise arguments as a JSON string
        try:
            arguments = json.loads(arguments)
        except (ValueError, RecursionError):
            arguments = None
    if not isinstance(name, str) or not isinstance(arguments, dict):
        return ToolCall(str(name or ""), problem="a call needs a string 'name' and an object 'arguments'")
    if name not in tools:
        return ToolCall(name, problem=f"no tool named {name!r}; the tools are {sorted(tools)}")
    return ToolCall(name, kwargs=arguments)


__all__ = ["ChatTemplateTools"]
