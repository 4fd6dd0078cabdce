"""Tools as chat templates see them: the JSON schema of a Python function (``apply_chat_template(tools=)``), and a
check that a tokenizer's template renders them at all. The data module renders prompts with them and the chat-format
tool environment renders results with them (``environments/chat_tools.py``), so both live below both."""

from __future__ import annotations

import importlib
import inspect
import json
from typing import Any, Callable, Sequence


def tool_schema(function: Callable[..., Any]) -> dict[str, Any]:
    """The function's JSON schema as chat templates render ``tools=`` (transformers' ``get_json_schema``, which
    reads type hints and a Google-style docstring); without a docstring, one built from the signature alone."""
    from transformers.utils import get_json_schema

    try:
        return get_json_schema(function)
    except Exception:
        parameters = inspect.signature(function).parameters
        required = [name for name, p in parameters.items() if p.default is inspect.Parameter.empty]
        return {"type": "function", "function": {
            "name": function.__name__, "description": (inspect.getdoc(function) or "").split("\n\n")[0],
            "parameters": {"type": "object", "properties": {name: {"type": "string"} for name in parameters},
                           "required": required}}}


def _function(path: str) -> Callable[..., Any]:
    module, _, name = path.partition(":")
    try:
        function = getattr(importlib.import_module(module), name) if module and name else None
    except (ImportError, AttributeError) as err:
        raise ValueError(f"tool {path!r}: cannot import it ({err}); give an import path package.module:function") \
            from None
    if not callable(function):
        raise ValueError(f"tool {path!r} is not an import path package.module:function of a function")
    return function


def tool_schemas(tools: Sequence[Callable[..., Any] | str]) -> list[dict[str, Any]]:
    """The JSON schemas of ``tools`` (functions or import paths), as ``apply_chat_template(tools=)`` takes them."""
    return [tool_schema(_function(t) if isinstance(t, str) else t) for t in tools]


def check_renders_tools(tokenizer: Any, schemas: list[dict[str, Any]]) -> None:
    """Raise where the tokenizer's chat template leaves ``tools=`` out of the prompt (SmolLM2's does)."""
    probe = [{"role": "user", "content": "hi"}]
    template = getattr(tokenizer, "chat_template", None)
    rendered = template and tokenizer.apply_chat_template(probe, tools=schemas, tokenize=False,
                                                          add_generation_prompt=True)
    if not template or rendered == tokenizer.apply_chat_template(probe, tokenize=False, add_generation_prompt=True):
        name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
        raise ValueError(f"the chat template of {name} does not render tools=, so the model has no tool format of "
                         "its own; use the tag protocol (EpisodeArgs(protocol='tags'), no data.tools) and describe "
                         "the tools in the prompt (docs/environments.md)")


def tool_schemas_json(tools: list[str] | None) -> str | None:
    """The JSON schemas of tool functions given by import path, as one JSON text (None for None)."""
    return None if tools is None else json.dumps(tool_schemas(tools))  # key order as apply_chat_template gives it


__all__ = ["check_renders_tools", "tool_schema", "tool_schemas", "tool_schemas_json"]
