"""DAPO's data-side pieces (https://arxiv.org/abs/2503.14476): dynamic sampling, overlong penalty and filtering."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor


class DynamicSampling(NamedTuple):
    """The rows that survive dynamic sampling (``keep``, ``(batch,)`` bool) and the groups dropped, to log."""

    keep: Tensor
    num_dropped: int
    num_groups: int


def dynamic_sampling(scores: Tensor, num_generations: int, atol: float = 0.0) -> DynamicSampling:
    """Drop the groups with under two scored or all-equal rewards (no gradient; DAPO 3.2); the caller may refill.

    Args:
        scores: ``(num_prompts * num_generations,)`` rewards, prompt-major; ``nan`` = no reward for the row.
        num_generations: samples per prompt (the group size).
        atol: rewards within ``atol`` of each other count as equal (0: exactly equal, as in the paper).
    """
    if num_generations < 1 or scores.dim() != 1 or scores.shape[0] % num_generations:
        raise ValueError(
            f"scores must be shaped (num_prompts * num_generations,) with num_generations={num_generations} >= 1, "
            f"got {tuple(scores.shape)}"
        )
    if atol < 0:
        raise ValueError(f"atol must be >= 0, got {atol}")
    groups = scores.detach().double().view(-1, num_generations)
    scored = ~groups.isnan()
    spread = groups.masked_fill(~scored, -torch.inf).amax(1) - groups.masked_fill(~scored, torch.inf).amin(1)
    informative = (scored.sum(1) >= 2) & (spread > atol)
    return DynamicSampling(
        keep=informative.repeat_interleave(num_generations),
        num_dropped=int((~informative).sum()),
        num_groups=groups.shape[0],
    )


def overlong_penalty(
    lengths: Tensor, max_length: int, buffer_length: int, penalty_factor: float = 1.0
) -> Tensor:
    """DAPO's soft overlong penalty (section 3.4, eq. 13), to add to the task reward: 0 up to
    ``max_length - buffer_length``, then linear down to ``-penalty_factor`` at ``max_length`` and beyond.

    Args:
        lengths: ``(batch,)`` response lengths in tokens.
        max_length: ``L_max``, the longest response wanted (usually the generation's ``max_new_tokens``).
        buffer_length: ``L_cache``, the length of the linear ramp before ``max_length`` (DAPO: 4096 of 20480).
        penalty_factor: the penalty at and beyond ``max_length`` (veRL's ``overlong_penalty_factor``).
    """
    if not 0 < buffer_length <= max_length:
        raise ValueError(f"need 0 < buffer_length <= max_length, got buffer_length={buffer_length}, "
                         f"max_length={max_length}")
    if penalty_factor < 0:
        raise ValueError(f"penalty_factor must be >= 0, got {penalty_factor}")
    over = (lengths.float() - (max_length - buffer_length)) / buffer_length
    return -penalty_factor * over.clamp(0.0, 1.0)


def mask_truncated(mask: Tensor, truncated: Tensor) -> tuple[Tensor, int]:
    """``(mask, num_truncated)``: ``mask`` ``(batch, seq)`` without the rows where ``truncated`` ``(batch,)`` (no EOS),
    and their count (DAPO section 3.4)."""
    if truncated.shape != mask.shape[:1]:
        raise ValueError(f"truncated must be shaped (batch,) = {tuple(mask.shape[:1])}, got {tuple(truncated.shape)}")
    truncated = truncated.bool()
    return mask.bool() & ~truncated.unsqueeze(1), int(truncated.sum())
