"""Multi-turn episodes at the token level: the model writes, the environment answers between its turns, until done.

Why token level: training must see exactly what was sampled. Each turn's tokens are appended as the generator gave
them (never decoded and re-encoded), an environment's answer is tokenized once and appended after them, and
``model_mask`` marks the model's own tokens: the loss and the KL cover those alone, while the update's forward reads
every token, so each sampled token's log-prob is taken in the context it was sampled in.

Limits: ``max_turns`` model turns and ``max_tokens`` tokens after the prompt (model and environment together). An
episode that ends at a stop id (EOS) is finished; one stopped by a limit is *truncated*: its text is scored as it
stands and ``ended`` is False for it, so ``GRPOModule(filter_truncated=True)`` leaves it out of the loss, as it does
an answer cut at ``max_new_tokens`` (docs/environments.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Sequence

from torch import Tensor

from lightning_rlhf.data.collate import pad
from lightning_rlhf.environments.base import Environment, Message, ToolEnvironment

#: ``(contexts, max_new_tokens) -> new tokens per context``: one model turn for each context (token ids, unpadded),
#: stopping at a stop id, at one of the environment's stop strings or after ``max_new_tokens``
TurnGenerator = Callable[[list[list[int]], int], list[list[int]]]


@dataclass
class EpisodeArgs:
    """Multi-turn rollouts: the environment that answers the model between its turns, and the limits.

    Attributes:
        tools: tool functions by import path (``package.module:function``), called with the tag protocol
            (``<tool>calc(17*23)</tool>`` answered by ``<result>391</result>``); builds a
            :class:`~lightning_rlhf.environments.ToolEnvironment`.
        environment: an :class:`~lightning_rlhf.environments.Environment` class or factory by import path, called
            with no arguments, instead of ``tools``.
        max_turns: most model turns per episode; an episode still going after them is truncated.
        max_tokens: most tokens per episode after the prompt, the environment's included (None: ``max_turns`` x
            ``generation.max_new_tokens``).
        tool_timeout_s: seconds one tool call may run before the episode gets an error message instead.
        protocol: how ``tools`` are called: ``tags`` (the tag protocol, for any model; describe the tools in the
            prompt) or ``chat_template`` (the model's own format: ``<tool_call>`` JSON, results as the template's
            ``tool`` messages; give the data module the same ``tools`` so that prompts carry their schemas).
    """

    tools: list[str] | None = None
    environment: str | None = None
    max_turns: int = 4
    max_tokens: int | None = None
    tool_timeout_s: float = 5.0
    protocol: Literal["tags", "chat_template"] = "tags"

    def __post_init__(self) -> None:
        if (self.tools is None) == (self.environment is None):
            raise ValueError("EpisodeArgs needs tools (import paths of functions) or an environment (the import path "
                             "of an Environment class or factory), not both and not neither")
        if self.max_turns < 1:
            raise ValueError(f"EpisodeArgs.max_turns must be >= 1, got {self.max_turns}")
        if self.protocol not in ("tags", "chat_template"):
            raise ValueError(f"EpisodeArgs.protocol must be 'tags' or 'chat_template', got {self.protocol!r}")
        if self.protocol == "chat_template" and self.tools is None:
            raise ValueError("EpisodeArgs.protocol='chat_template' calls tools; give tools, or protocol='tags' with "
                             "an environment")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ValueError(f"EpisodeArgs.max_tokens must be >= 1 or None, got {self.max_tokens}")

    def build(self, tokenizer: Any = None) -> Environment:
        """The environment these settings name (``tokenizer``: the policy's, for ``protocol='chat_template'``)."""
        if self.tools is not None and self.protocol == "chat_template":
            from lightning_rlhf.environments.chat_tools import ChatTemplateTools

            return ChatTemplateTools(self.tools, tokenizer, timeout_s=self.tool_timeout_s)
        if self.tools is not None:
            return ToolEnvironment(self.tools, timeout_s=self.tool_timeout_s)
        from lightning_rlhf.rewards.resolve import import_callable

        environment = import_callable(str(self.environment), "EpisodeArgs.environment")()
        if not isinstance(environment, Environment):
            raise TypeError(f"EpisodeArgs.environment {self.environment!r} made a {type(environment).__name__}; it "
                            "must make a lightning_rlhf.environments.Environment")
        return environment


@dataclass
class Episodes:
    """The episodes of one batch of prompts, one entry per prompt row."""

    tokens: list[list[int]]
    model_mask: list[list[bool]]
    texts: list[str] = field(default_factory=list)
    answers: list[str] = field(default_factory=list)
    turns: list[int] = field(default_factory=list)
    tool_calls: list[int] = field(default_factory=list)
    tool_errors: list[int] = field(default_factory=list)
    ended: list[bool] = field(default_factory=list)
    hit_max_turns: list[bool] = field(default_factory=list)
    hit_max_tokens: list[bool] = field(default_factory=list)

    def tensors(self, pad_token_id: int) -> tuple[Tensor, Tensor, Tensor]:
        """``(responses, model_mask, token_mask)``, each ``(rows, longest)`` and right-padded: the tokens after the
        prompt, where the model wrote them, and where any real token is (the attention mask's response part)."""
        width = max(1, max(len(t) for t in self.tokens))
        responses, real = pad(self.tokens, pad_token_id, width=width)
        model = pad([[int(m) for m in mask] for mask in self.model_mask], 0, width=width)[0]
        return responses, model.bool(), real.bool()


def _through_stop(tokens: Sequence[int], stop_ids: set[int], pad_token_id: int | None) -> list[int]:
    """A turn's tokens through its first stop id; padding after a turn that stopped at a stop string dropped."""
    out: list[int] = []
    for token in tokens:
        out.append(int(token))
        if token in stop_ids:
            return out
    while out and pad_token_id is not None and out[-1] == pad_token_id:
        out.pop()
    return out


def run_episodes(generate_turn: TurnGenerator, tokenizer: Any, environment: Environment,
                 records: Sequence[dict[str, Any]], prompt_ids: Sequence[Sequence[int]], stop_ids: Sequence[int],
                 max_turns: int, max_tokens: int, max_new_tokens: int) -> Episodes:
    """Run one episode per prompt row, all rows' turns batched together.

    Args:
        generate_turn: the policy's turn generator (:data:`TurnGenerator`).
        tokenizer: turns environment text into tokens (no special tokens) and the model's tokens into text.
        environment: answers each model turn (:class:`~lightning_rlhf.environments.Environment`).
        records: one data row per prompt (``prompt`` and its reference columns) for ``environment.reset``.
        prompt_ids: each prompt's token ids, unpadded.
        stop_ids: the ids that end an episode (EOS, end of turn).
        max_turns: most model turns per episode.
        max_tokens: most tokens per episode after the prompt, the environment's included.
        max_new_tokens: most tokens of one model turn.
    """
    if max_turns < 1 or max_tokens < 1 or max_new_tokens < 1:
        raise ValueError(f"max_turns ({max_turns}), max_tokens ({max_tokens}) and max_new_tokens ({max_new_tokens}) "
                         f"must be >= 1")
    rows, stops = len(prompt_ids), {int(s) for s in stop_ids}
    messages: list[list[Message]] = [list(environment.reset(record)) for record in records]
    ep = Episodes([[] for _ in range(rows)], [[] for _ in range(rows)], turns=[0] * rows, tool_calls=[0] * rows,
                  tool_errors=[0] * rows, ended=[False] * rows, hit_max_turns=[False] * rows,
                  hit_max_tokens=[False] * rows)
    last_turn: list[list[int]] = [[] for _ in range(rows)]
    active = list(range(rows))
    for _ in range(max_turns):
        if not active:
            break
        budget = min(max_new_tokens, max(max_tokens - len(ep.tokens[r]) for r in active))
        new = generate_turn([list(prompt_ids[r]) + ep.tokens[r] for r in active], budget)
        still = []
        for row, tokens in zip(active, new):
            turn = _through_stop(tokens, stops, tokenizer.pad_token_id)[:max_tokens - len(ep.tokens[row])]
            ep.tokens[row] += turn
            ep.model_mask[row] += [True] * len(turn)
            ep.turns[row] += 1
            last_turn[row] = turn
            if turn and turn[-1] in stops:
                ep.ended[row] = True
                continue
            if len(ep.tokens[row]) >= max_tokens:
                ep.hit_max_tokens[row] = True
                continue
            said = tokenizer.decode(turn, skip_special_tokens=True)
            messages[row].append({"role": "assistant", "content": said})
            reply, _, done = environment.step(messages[row])
            if done or not reply:  # the turn neither called a tool nor ended: cut at max_new_tokens
                continue
            messages[row] += reply
            ep.tool_calls[row] += sum(m.get("role") == "tool" for m in reply)
            ep.tool_errors[row] += sum(bool(m.get("error")) for m in reply)
            answer = tokenizer("".join(environment.render(m) for m in reply), add_special_tokens=False)["input_ids"]
            room = max_tokens - len(ep.tokens[row])
            ep.tokens[row] += answer[:room]
            ep.model_mask[row] += [False] * len(answer[:room])
            last_turn[row] = []
            if len(answer) >= room:
                ep.hit_max_tokens[row] = True
                continue
            still.append(row)
        active = still
    for row in active:
        ep.hit_max_turns[row] = True
    ep.texts = [tokenizer.decode(tokens, skip_special_tokens=True) for tokens in ep.tokens]
    ep.answers = [tokenizer.decode(turn, skip_special_tokens=True) for turn in last_turn]
    return ep


__all__ = ["EpisodeArgs", "Episodes", "TurnGenerator", "run_episodes"]
