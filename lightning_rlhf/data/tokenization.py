"""Per-stage tokenization of normalised records into unpadded token lists.

Prompt and response are tokenized apart and concatenated, so SFT's label mask is exact and SFT trains on the very
prompt tokens PPO generates from. Prompts go through the tokenizer's chat template, else ``"Human: {prompt}
Assistant:"``; responses end with EOS when ``add_eos``; long prompts are dropped or left-truncated.
"""

from __future__ import annotations

import json

import re
from dataclasses import dataclass
from typing import Any, Literal

from transformers import PreTrainedTokenizerBase

LongPromptPolicy = Literal["drop", "truncate"]
Stage = Literal["sft", "reward", "rl"]

DROP_LONG_PROMPT = "prompt longer than max_prompt_length"
DROP_NO_PAIR = "no preference pair (SFT-only record)"
DROP_SAME_PAIR = "chosen and rejected identical after truncation"
DROP_NO_RESPONSE = "no response to learn (prompt-only record)"

#: bumped whenever :meth:`Encoder.encode` returns other columns, so that older tokenized caches are not read
ENCODING_VERSION = 3

_TURN = re.compile(r"\s*(Human|Assistant):\s*")


@dataclass(frozen=True)
class TokenizeSettings:
    """How records become tokens: :class:`~lightning_rlhf.data.RLHFDataModule`'s arguments of the same names."""

    max_prompt_length: int = 256
    max_length: int = 512
    long_prompt_policy: LongPromptPolicy = "drop"
    add_eos: bool = True
    use_chat_template: bool = True
    #: the tools' JSON schemas (a JSON list) that prompts render through the chat template; None: none
    tools_json: str | None = None

    def __post_init__(self) -> None:
        if not 0 < self.max_prompt_length < self.max_length:
            raise ValueError(
                f"need 0 < max_prompt_length < max_length, got {self.max_prompt_length} and {self.max_length}"
            )
        if self.long_prompt_policy not in ("drop", "truncate"):
            raise ValueError(f"long_prompt_policy must be 'drop' or 'truncate', got {self.long_prompt_policy!r}")


def dialogue_messages(prompt: str) -> list[dict[str, str]]:
    """Split a "Human: ... Assistant: ..." prompt into chat messages (a plain prompt is one user turn)."""
    parts = _TURN.split(prompt)
    if len(parts) < 3:
        return [{"role": "user", "content": prompt.strip()}]
    messages = []
    for speaker, text in zip(parts[1::2], parts[2::2]):
        if text.strip():
            messages.append({"role": "user" if speaker == "Human" else "assistant", "content": text.strip()})
    return messages


def _special_affixes(tokenizer: PreTrainedTokenizerBase) -> tuple[str, str]:
    bare = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a", add_special_tokens=True)["input_ids"]
    for start in range(len(full) - len(bare) + 1):
        if full[start : start + len(bare)] == bare:
            prefix, suffix = full[:start], full[start + len(bare):]
            return tokenizer.decode(prefix), tokenizer.decode(suffix)
    return "", ""


def plain_chat_template(tokenizer: PreTrainedTokenizerBase) -> str:
    """A Jinja chat template rendering messages as :class:`Encoder` formats prompts without one (BOS included), so
    that an export carries the format its model was trained on."""
    prefix, suffix = _special_affixes(tokenizer)
    return (
        prefix
        + "{% for message in messages %}"
        "{% if not loop.first %} {% endif %}"
        "{% if message['role'] == 'user' %}Human: {{ message['content'] | trim }}"
        "{% elif message['role'] == 'assistant' %}Assistant: {{ message['content'] | trim }}"
        "{% else %}{{ message['content'] | trim }}{% endif %}"
        "{% endfor %}"
        "{% if add_generation_prompt %} Assistant:{% endif %}"
        + suffix
    )


class Encoder:
    """Formats and tokenizes prompts and responses for one tokenizer and one :class:`TokenizeSettings`."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, settings: TokenizeSettings) -> None:
        self.tokenizer = tokenizer
        self.settings = settings
        template = getattr(tokenizer, "chat_template", None)
        # an export of an earlier step carries :func:`plain_chat_template`: that is this format, not a chat model's
        self.chat = bool(settings.use_chat_template and template and template != plain_chat_template(tokenizer))
        self.tools = json.loads(settings.tools_json) if settings.tools_json else None
        if self.tools is not None:
            from lightning_rlhf.data.tool_schemas import check_renders_tools

            if not self.chat:
                raise ValueError("data.tools renders tool schemas through the chat template, and use_chat_template "
                                 "is off or the tokenizer has none; set use_chat_template=True or drop data.tools")
            check_renders_tools(tokenizer, self.tools)
        if settings.add_eos and tokenizer.eos_token_id is None:
            raise ValueError("add_eos=True but the tokenizer has no EOS token; set add_eos=False or add one")

    def prompt_text(self, prompt: str) -> str:
        """The prompt as the model sees it."""
        if self.chat:
            return self.tokenizer.apply_chat_template(
                dialogue_messages(prompt), tools=self.tools, tokenize=False, add_generation_prompt=True
            )
        if _TURN.search(prompt) and prompt.rstrip().endswith("Assistant:"):
            return prompt
        return f"Human: {prompt.strip()} Assistant:"

    def chat_template(self) -> str:
        """The chat template that reproduces :meth:`prompt_text`."""
        return self.tokenizer.chat_template if self.chat else plain_chat_template(self.tokenizer)

    def prompt_ids(self, prompt: str) -> tuple[list[int], bool]:
        """Token ids of the formatted prompt (left-truncated, BOS kept) and whether it was too long."""
        ids = self.tokenizer(self.prompt_text(prompt), add_special_tokens=not self.chat)["input_ids"]
        limit = self.settings.max_prompt_length
        if len(ids) <= limit:
            return ids, False
        bos = self.tokenizer.bos_token_id
        keep_bos = bos is not None and ids[0] == bos
        return ([bos] if keep_bos else []) + ids[len(ids) - limit + keep_bos:], True

    def response_ids(self, response: str) -> list[int]:
        """Token ids of a response (after one space, without a chat template)."""
        text = response.strip() if self.chat else (response if response[:1].isspace() else " " + response)
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return ids + [self.tokenizer.eos_token_id] if self.settings.add_eos else ids

    def full(self, prompt_ids: list[int], response: str) -> list[int]:
        return (prompt_ids + self.response_ids(response))[: self.settings.max_length]

    def encode(self, record: dict[str, Any], stage: Stage) -> dict[str, Any]:
        """Tokenize one record for ``stage``; ``drop_reason`` is empty for records to keep."""
        prompt_ids, too_long = self.prompt_ids(record["prompt"])
        out: dict[str, Any] = {"drop_reason": "", "truncated": too_long and self.settings.long_prompt_policy != "drop"}
        if too_long and self.settings.long_prompt_policy == "drop":
            out["drop_reason"] = DROP_LONG_PROMPT
        if stage == "sft":
            response = record["response"] if record.get("response") is not None else record.get("chosen")
            if response is None:
                return {"drop_reason": DROP_NO_RESPONSE, "truncated": False, "input_ids": [], "prompt_length": 0}
            out["input_ids"] = self.full(prompt_ids, response)
            out["prompt_length"] = len(prompt_ids)
        elif stage == "reward":
            if record.get("chosen") is None or record.get("rejected") is None:
                return {"drop_reason": DROP_NO_PAIR, "truncated": False, "chosen_input_ids": [],
                        "rejected_input_ids": [], "prompt_length": 0}
            out["prompt_length"] = len(prompt_ids)  # DPO scores only what follows it
            out["chosen_input_ids"] = self.full(prompt_ids, record["chosen"])
            out["rejected_input_ids"] = self.full(prompt_ids, record["rejected"])
            if not out["drop_reason"] and out["chosen_input_ids"] == out["rejected_input_ids"]:
                out["drop_reason"] = DROP_SAME_PAIR
        else:
            out["prompt_input_ids"] = prompt_ids
        return out


def encode_batch(batch: dict[str, list], encoder: Encoder, stage: Stage) -> dict[str, list]:
    """Tokenize a batch of records for ``stage``, for ``datasets.Dataset.map(batched=True)``."""
    rows = [dict(zip(batch, values)) for values in zip(*batch.values())]
    encoded = [encoder.encode(row, stage) for row in rows]
    return {key: [e[key] for e in encoded] for key in encoded[0]} if encoded else {}
