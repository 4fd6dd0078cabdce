"""Masked reductions: mean, variance and whitening over the real (unmasked) entries only.

Why: every PPO quantity lives on padded ``(batch, seq)`` tensors where only response tokens count.
Masked entries never contribute, even when they hold ``nan``/``inf`` (we select with
``torch.where`` instead of multiplying by the mask). Reference: TRL's ``masked_mean`` /
``masked_whiten`` (https://github.com/huggingface/trl/blob/v0.11.0/trl/core.py).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor


def _as_bool(mask: Tensor | None, like: Tensor) -> Tensor:
    """``mask`` as a bool tensor broadcastable to ``like`` (all-true when ``None``)."""
    if mask is None:
        return torch.ones_like(like, dtype=torch.bool)
    if mask.shape != like.shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} does not match values shape {tuple(like.shape)}")
    return mask.bool()


def masked_sum(values: Tensor, mask: Tensor | None = None, dim: int | None = None) -> Tensor:
    """Sum of ``values`` where ``mask`` is true.

    Args:
        values: any shape, e.g. ``(batch, seq)``.
        mask: same shape as ``values``; true (or 1) marks entries that count. ``None`` counts all.
        dim: reduce over this dimension only; ``None`` reduces over everything.

    Returns:
        A scalar, or ``values`` with ``dim`` removed.
    """
    mask = _as_bool(mask, values)
    selected = torch.where(mask, values, torch.zeros((), dtype=values.dtype, device=values.device))
    return selected.sum() if dim is None else selected.sum(dim)


def masked_mean(values: Tensor, mask: Tensor | None = None, dim: int | None = None) -> Tensor:
    """Mean of ``values`` where ``mask`` is true; ``0`` where nothing is selected.

    Args:
        values: any shape, e.g. ``(batch, seq)``.
        mask: same shape as ``values``; true (or 1) marks entries that count. ``None`` counts all.
        dim: reduce over this dimension only (an all-masked row gives 0); ``None`` reduces over all.

    Returns:
        A scalar, or ``values`` with ``dim`` removed.
    """
    mask = _as_bool(mask, values)
    count = mask.sum() if dim is None else mask.sum(dim)
    return masked_sum(values, mask, dim) / count.clamp(min=1).to(values.dtype)


def masked_var(values: Tensor, mask: Tensor | None = None, unbiased: bool = True) -> Tensor:
    """Variance of the selected entries of ``values`` (over all dimensions).

    Args:
        values: any shape, e.g. ``(batch, seq)``.
        mask: same shape as ``values``; true marks entries that count. ``None`` counts all.
        unbiased: apply Bessel's correction (divide by ``n - 1``); with fewer than two selected
            entries the variance is reported as 0.

    Returns:
        A scalar tensor.
    """
    mask = _as_bool(mask, values)
    mean = masked_mean(values, mask)
    var = masked_mean((values - mean) ** 2, mask)
    if unbiased:
        count = mask.sum().to(values.dtype)
        var = torch.where(count > 1, var * count / (count - 1).clamp(min=1), torch.zeros_like(var))
    return var


def masked_whiten(
    values: Tensor,
    mask: Tensor | None = None,
    shift_mean: bool = True,
    eps: float = 1e-8,
    sum_across: Callable[[Tensor], Tensor] | None = None,
) -> Tensor:
    """Normalise the selected entries to zero mean and unit variance; masked entries become 0.

    Args:
        values: any shape, e.g. advantages ``(batch, seq)``.
        mask: same shape as ``values``; true marks entries that count. ``None`` counts all.
        shift_mean: subtract the mean; when false only scale (the mean is added back), as TRL does
            for rewards.
        eps: added to the variance before the square root.
        sum_across: sums a tensor over the processes that share the batch (an all-reduce), so the mean and
            variance are those of the global batch rather than of this rank's few rows; None: this rank only.

    Returns:
        A new tensor shaped like ``values``.
    """
    mask = _as_bool(mask, values)
    total = sum_across or (lambda t: t)
    sums = total(torch.stack([masked_sum(values, mask), mask.sum().to(values.dtype)]))
    count = sums[1]
    mean = sums[0] / count.clamp(min=1)
    var = total(masked_sum((values - mean) ** 2, mask)) / count.clamp(min=1)
    var = torch.where(count > 1, var * count / (count - 1).clamp(min=1), torch.zeros_like(var))
    whitened = (values - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return torch.where(mask, whitened, torch.zeros((), dtype=whitened.dtype, device=whitened.device))
