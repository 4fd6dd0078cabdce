"""Collators: pad tokenized examples into the batches every module relies on.

SFT: ``input_ids``, ``attention_mask``, ``labels`` (-100 on prompt and padding). Reward: ``chosen_``/``rejected_``
``input_ids`` and ``attention_mask``, and ``prompt_lengths`` (for DPO). PPO: ``prompt_input_ids`` and
``prompt_attention_mask`` left-padded for generation, the raw ``prompts`` and any reference ``columns`` by name.
"""

from __future__ import annotations

import json
from typing import Any, Sequence

import torch

IGNORE_INDEX = -100


def pad(
    sequences: Sequence[Sequence[int]], pad_id: int, left: bool = False, width: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad token lists to ``width`` (default: the longest), on the ``left`` or the right, with ``pad_id``; returns
    ``(ids, attention_mask)``, both ``(batch, seq)`` long."""
    width = max((len(s) for s in sequences), default=0) if width is None else width
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        span = slice(width - len(seq), width) if left else slice(0, len(seq))
        ids[row, span] = torch.as_tensor(list(seq), dtype=torch.long)
        mask[row, span] = 1
    return ids, mask


class SFTCollator:
    """Right-pads ``input_ids`` with ``pad_id`` and builds ``labels`` masked on the prompt and padding."""

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        input_ids, attention_mask = pad([e["input_ids"] for e in examples], self.pad_id)
        labels = input_ids.masked_fill(attention_mask == 0, IGNORE_INDEX)
        for row, example in enumerate(examples):
            labels[row, : example["prompt_length"]] = IGNORE_INDEX
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


class RewardCollator:
    """Right-pads chosen and rejected sequences to one shared width, so that modules can concatenate them."""

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = {}
        width = max(len(e[f"{side}_input_ids"]) for e in examples for side in ("chosen", "rejected"))
        for side in ("chosen", "rejected"):
            ids, mask = pad([e[f"{side}_input_ids"] for e in examples], self.pad_id, width=width)
            batch[f"{side}_input_ids"], batch[f"{side}_attention_mask"] = ids, mask
        batch["prompt_lengths"] = torch.tensor([e["prompt_length"] for e in examples], dtype=torch.long)
        return batch


class PromptCollator:
    """Left-pads prompts for generation and passes the raw prompt texts along."""

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        ids, mask = pad([e["prompt_input_ids"] for e in examples], self.pad_id, left=True)
        batch = {"prompt_input_ids": ids, "prompt_attention_mask": mask, "prompts": [e["prompt"] for e in examples]}
        columns = reference_columns(examples)
        if columns:
            batch["columns"] = columns
        return batch


def reference_columns(examples: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """The records' reference columns by name, one entry per example (``None`` where a record lacks one)."""
    decoded = [json.loads(e.get("columns") or "{}") for e in examples]
    names = list(dict.fromkeys(name for columns in decoded for name in columns))
    return {name: [columns.get(name) for columns in decoded] for name in names}


COLLATORS = {"sft": SFTCollator, "reward": RewardCollator, "rl": PromptCollator}
