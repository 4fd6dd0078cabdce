"""Replay of guided answers: imitation that covers every prompt guidance has answered, not only this rollout's.

Imitating the guided answers teaches a form for every prompt at once but the answers only for the rollout's few, so
the bare form won with wrong answers (docs/tasks.md, round 11). Each rank keeps the latest right answer in the wanted
form per prompt (guided, or the policy's own) and adds some, drawn at random, to every mini-batch's imitation term.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


class AnswerReplay:
    """The latest kept answer per prompt (token ids, ended by its stop token), the oldest dropped first.

    Args:
        pad_token_id: the id that pads the rows :meth:`rows` builds.
        capacity: the most prompts kept.
    """

    def __init__(self, pad_token_id: int, capacity: int = 4096) -> None:
        if capacity < 1:
            raise ValueError(f"answer replay's capacity must be >= 1, got {capacity}")
        self.pad_token_id = pad_token_id
        self.capacity = capacity
        self.answers: dict[tuple[int, ...], tuple[int, ...]] = {}

    def __len__(self) -> int:
        return len(self.answers)

    def add(self, sequences: Tensor, attention_mask: Tensor, response_mask: Tensor, rows: Tensor) -> None:
        """Keep the ``rows`` (``(B,)`` bool) of a rollout laid out as ``prompt (left-padded) + response``."""
        prompt_width = sequences.shape[1] - response_mask.shape[1]
        for row in rows.nonzero().flatten().tolist():
            prompt = tuple(sequences[row, :prompt_width][attention_mask[row, :prompt_width].bool()].tolist())
            self.answers.pop(prompt, None)  # re-inserted as the newest
            self.answers[prompt] = tuple(sequences[row, prompt_width:][response_mask[row]].tolist())
        while len(self.answers) > self.capacity:
            self.answers.pop(next(iter(self.answers)))

    def rows(self, count: int, prompt_width: int, response_width: int, generator: torch.Generator,
             device: torch.device | str = "cpu") -> tuple[Tensor, Tensor, Tensor] | None:
        """Up to ``count`` kept answers that fit, drawn without replacement, in a mini-batch's layout (or None)."""
        fitting = [(p, a) for p, a in self.answers.items() if len(p) <= prompt_width and len(a) <= response_width]
        if not fitting or count < 1:
            return None
        chosen = torch.randperm(len(fitting), generator=generator)[:count].tolist()
        width = prompt_width + response_width
        sequences = torch.full((len(chosen), width), self.pad_token_id, dtype=torch.long)
        attention = torch.zeros((len(chosen), width), dtype=torch.long)
        answer_mask = torch.zeros((len(chosen), response_width), dtype=torch.bool)
        for i, index in enumerate(chosen):
            prompt, answer = fitting[index]
            start = prompt_width - len(prompt)
            sequences[i, start:prompt_width] = torch.tensor(prompt)
            sequences[i, prompt_width:prompt_width + len(answer)] = torch.tensor(answer)
            attention[i, start:prompt_width + len(answer)] = 1
            answer_mask[i, :len(answer)] = True
        return sequences.to(device), attention.to(device), answer_mask.to(device)

    def state_dict(self) -> dict[str, Any]:
        """The kept answers, oldest first, for a checkpoint."""
        return {"answers": [[list(p), list(a)] for p, a in self.answers.items()]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved."""
        self.answers = {tuple(p): tuple(a) for p, a in state["answers"]}


__all__ = ["AnswerReplay"]
