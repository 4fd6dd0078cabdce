"""Online experience: the rollout buffer, what ``generate`` returns, and the group layout of a batch.

A row is ``prompt (left-padded, P) + response (right-padded, R)``; per-token tensors are ``(batch, R)``, masked by
``response_mask`` (through the first EOS). A group is ``G`` consecutive rows answering one prompt."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any, Iterator, Mapping, Sequence

import torch
from torch import Tensor

from lightning_rlhf.rewards.combined import SampleRewards


@dataclass
class Rollout:
    """One buffer of experience, batch first: ``sequences``, ``attention_mask`` ``(B, P + R)``, the rest ``(B, R)``.

    ``logprobs`` and ``values`` are from sampling time; ``values`` and ``returns`` are None without a critic,
    ``ref_logprobs`` unless the update's loss needs them (GRPO's KL), ``demonstrations`` ``(B,)`` (the guided
    answers) unless the loss imitates them."""

    sequences: Tensor
    attention_mask: Tensor
    response_mask: Tensor
    logprobs: Tensor
    advantages: Tensor
    values: Tensor | None = None
    returns: Tensor | None = None
    ref_logprobs: Tensor | None = None
    demonstrations: Tensor | None = None

    @property
    def prompt_length(self) -> int:
        """``P``: the (padded) prompt length shared by the buffer."""
        return self.sequences.shape[1] - self.response_mask.shape[1]

    def __len__(self) -> int:
        return self.sequences.shape[0]

    def select(self, index: Tensor) -> "Rollout":
        """The rows ``index`` of every tensor (absent ones stay None)."""
        return replace(self, **{f.name: getattr(self, f.name)[index] for f in fields(self)
                                if getattr(self, f.name) is not None})

    def minibatches(self, size: int, generator: torch.Generator | None = None) -> Iterator["Rollout"]:
        """Shuffled mini-batches of ``size`` rows (the last may be smaller)."""
        order = torch.randperm(len(self), generator=generator).to(self.sequences.device)
        for start in range(0, len(self), size):
            yield self.select(order[start : start + size])


@dataclass
class Generated:
    """What one rollout's ``generate`` returns, laid out as :class:`Rollout`; ``eos_found`` is ``(B,)``, and
    ``logprobs``/``entropy`` (from ``generate``'s own logits) are None when not requested or not available.
    ``sampler_logprobs`` are the log-probs a generation engine of its own (vLLM) reported for its tokens."""

    sequences: Tensor
    attention_mask: Tensor
    response_mask: Tensor
    eos_found: Tensor
    logprobs: Tensor | None = None
    entropy: Tensor | None = None
    sampler_logprobs: Tensor | None = None

    def response_ids(self) -> list[list[int]]:
        """Each row's response tokens where the response mask is true (the ids reward functions receive)."""
        width = self.response_mask.shape[1]
        return [row[keep].tolist() for row, keep in zip(self.sequences[:, -width:], self.response_mask)]


@dataclass
class Experience:
    """What one rollout produced, before an algorithm turns it into advantages: one row per answer (a group's
    prompt repeated), per-token tensors ``(B, R)``; ``ref_logprobs``, ``values`` and ``model_scores`` (the reward
    model's raw ``(B,)`` scores) are None without the model that makes them."""

    prompts: list[str]
    responses: list[str]
    generated: Generated
    logprobs: Tensor
    entropy: Tensor | None
    ref_logprobs: Tensor | None
    values: Tensor | None
    rewards: SampleRewards
    model_scores: Tensor | None
    guided: Tensor | None = None  # (B,) the answers answer guidance placed


def response_mask_from_tokens(responses: Tensor, eos_token_id: int | Sequence[int]) -> tuple[Tensor, Tensor]:
    """``(mask, eos_found)``: ``(B, R)`` true through the first EOS (a row without one: throughout), ``(B,)`` EOS seen.
    Padding after EOS never counts, even when pad equals EOS; ``eos_token_id`` may be several end-of-turn ids."""
    ids = [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id)
    is_eos = torch.isin(responses, torch.tensor(ids, device=responses.device, dtype=responses.dtype))
    eos_found = is_eos.any(dim=1)
    # number of EOS strictly before each position: 0 means "not yet ended"
    ended_before = torch.cumsum(is_eos.long(), dim=1) - is_eos.long()
    return ended_before == 0, eos_found


def check_left_padded(prompt_mask: Tensor) -> None:
    """Raise if any prompt row is right-padded: ``generate`` would answer it after its pad tokens."""
    mask = prompt_mask.bool()
    bad = (mask[:, :-1] & ~mask[:, 1:]).any(dim=1) | (~mask[:, -1] & mask.any(dim=1))
    if bad.any():
        rows = bad.nonzero().flatten().tolist()
        raise ValueError(
            f"Prompts must be left-padded, but prompt_attention_mask rows {rows[:8]} have padding after their "
            f"tokens (right padding). Pad prompts on the left: set tokenizer.padding_side = 'left' before collating "
            f"them (or use RLHFDataModule(stage='rl'), whose collator does)."
        )


def pad_right(tensors: list[Tensor], value: float) -> Tensor:
    """Concatenate ``(b_i, T_i)`` tensors along the batch, right-padding each to the longest ``T_i``."""
    width = max(t.shape[1] for t in tensors)
    padded = [torch.nn.functional.pad(t, (0, width - t.shape[1]), value=value) for t in tensors]
    return torch.cat(padded, dim=0)


def repeat_groups(batch: Mapping[str, Any], group_size: int) -> dict[str, Any]:
    """The prompt batch with each row-aligned entry repeated ``group_size`` times in a row; the rest kept."""
    if group_size == 1:
        return dict(batch)
    rows = len(batch["prompt_input_ids"])

    def repeat(value: Any) -> Any:
        if isinstance(value, Tensor) and value.dim() > 0 and len(value) == rows:
            return value.repeat_interleave(group_size, dim=0)
        if isinstance(value, (list, tuple)) and len(value) == rows:
            return [item for item in value for _ in range(group_size)]
        if isinstance(value, Mapping):
            return {name: repeat(column) for name, column in value.items()}
        return value

    return {name: repeat(value) for name, value in batch.items()}
