"""Multi-turn rollouts: environments that answer the model between its turns, and tools they call.

:class:`Environment` and :class:`ToolEnvironment`, bounded tool calls (:class:`Toolbox`), the tag protocol
(:mod:`.tags`), tools in the model's own chat format (:class:`ChatTemplateTools`) and the token-level episode runner (:mod:`.episodes`), which ``GRPOModule`` and ``PPOModule(episodes=...)`` run
(docs/environments.md).
"""

from lightning_rlhf.environments.base import Environment, Message, ToolEnvironment
from lightning_rlhf.environments.chat_tools import ChatTemplateTools
from lightning_rlhf.environments.episodes import EpisodeArgs, Episodes, run_episodes
from lightning_rlhf.environments.tags import CALL_END, ToolCall, last_call, render_result
from lightning_rlhf.environments.tools import Toolbox, ToolResult, tool_schema

__all__ = ["CALL_END", "ChatTemplateTools", "Environment", "EpisodeArgs", "Episodes", "Message", "ToolCall",
           "ToolEnvironment", "ToolResult", "Toolbox", "last_call", "render_result", "run_episodes", "tool_schema"]
