"""Multi-turn rollouts: environments that answer the model between its turns, and tools they call.

The building blocks (issue 34): :class:`Environment` and :class:`ToolEnvironment`, bounded tool calls
(:class:`Toolbox`) and the tag protocol (:mod:`.tags`). The online loop does not run episodes yet.
"""

from lightning_rlhf.environments.base import Environment, Message, ToolEnvironment
from lightning_rlhf.environments.tags import CALL_END, ToolCall, last_call, render_result
from lightning_rlhf.environments.tools import Toolbox, ToolResult, tool_schema

__all__ = ["CALL_END", "Environment", "Message", "ToolCall", "ToolEnvironment", "ToolResult", "Toolbox",
           "last_call", "render_result", "tool_schema"]
