"""Masked reductions over the real entries of padded ``(batch, seq)`` tensors, as TRL's ``masked_mean`` /
``masked_whiten``: masked entries never count, even ``nan``/``inf`` ones (we select, never multiply by the mask).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor


def _as_bool(mask: Tensor | None, like: Tensor) -> Tensor:
    if mask is None:
        return torch.ones_like(like, dtype=torch.bool)
    if mask.shape != like.shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} does not match values shape {tuple(like.shape)}")
    return mask.bool()


def masked_sum(values: Tensor, mask: Tensor | None = None, dim: int | None = None) -> Tensor:
    """Sum of ``values`` (any shape) where ``mask`` (same shape; ``None``: all) is true, over ``dim`` or all."""
    mask = _as_bool(mask, values)
    selected = torch.where(mask, values, torch.zeros((), dtype=values.dtype, device=values.device))
    return selected.sum() if dim is None else selected.sum(dim)


def masked_mean(values: Tensor, mask: Tensor | None = None, dim: int | None = None) -> Tensor:
    """Mean of ``values`` where ``mask`` is true, 0 where nothing is; args as :func:`masked_sum`."""
    mask = _as_bool(mask, values)
    count = mask.sum() if dim is None else mask.sum(dim)
    return masked_sum(values, mask, dim) / count.clamp(min=1).to(values.dtype)


def masked_var(values: Tensor, mask: Tensor | None = None, unbiased: bool = True) -> Tensor:
    """Variance of the selected entries over all dimensions; ``unbiased`` divides by ``n - 1`` (0 below 2 entries)."""
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
        mask: same shape as ``values``, true on entries that count; ``None`` counts all.
        shift_mean: subtract the mean; when false only scale (as TRL does for rewards).
        eps: added to the variance before the square root.
        sum_across: all-reduce sum over the ranks sharing the batch, for global statistics; None: this rank only.
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
