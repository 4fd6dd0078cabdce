"""Statistics pooled over ranks: sums added across processes before dividing, so a curve describes the global batch
(a mean of per-rank means weights a rank's 4 tokens like another's 400)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from lightning_rlhf.algorithms import masked_sum


@dataclass(frozen=True)
class Pooled:
    """A metric: ``combine`` of ``sums``, ``(k, 3)`` float64 (sum, sum of squares, count) rows added over ranks."""

    sums: Tensor
    combine: Callable[[Tensor], Tensor]


def moments(values: Tensor | float, mask: Tensor | None = None) -> Tensor:
    """``(3,)`` float64 ``(sum, sum of squares, count)`` of the entries of ``values`` where ``mask`` is true."""
    values = torch.as_tensor(values).detach().double()
    mask = torch.ones_like(values, dtype=torch.bool) if mask is None else mask.bool()
    return torch.stack([masked_sum(values, mask), masked_sum(values**2, mask), mask.sum().double()])


def _mean(row: Tensor) -> Tensor:
    return row[0] / row[2].clamp(min=1)


def _variance(row: Tensor) -> Tensor:
    """Unbiased variance from pooled sums; 0 with fewer than two values."""
    total, total_sq, count = row
    var = (total_sq - total**2 / count.clamp(min=1)) / (count - 1).clamp(min=1)
    return torch.where(count > 1, var.clamp(min=0), torch.zeros_like(var))


def pooled_mean(values: Tensor | float, mask: Tensor | None = None) -> Pooled:
    """The mean over every rank's selected entries (tokens, with a response mask)."""
    return Pooled(moments(values, mask).unsqueeze(0), lambda sums: _mean(sums[0]))


def pooled_mean_of(mean: Tensor | float, count: int) -> Pooled:
    """The global mean from this rank's ``mean`` of ``count`` values (weighted by ``count`` across ranks)."""
    row = torch.tensor([[float(mean) * count, 0.0, float(count)]], dtype=torch.float64)
    return Pooled(row, lambda sums: _mean(sums[0]))


def pooled_std(values: Tensor, mask: Tensor | None = None) -> Pooled:
    """The (unbiased) standard deviation over every rank's selected entries."""
    return Pooled(moments(values, mask).unsqueeze(0), lambda sums: _variance(sums[0]).sqrt())


def pooled_explained_variance(values: Tensor, returns: Tensor, mask: Tensor | None = None) -> Pooled:
    """``1 - Var(returns - values) / Var(returns)`` over every rank's selected entries (``nan`` if Var is 0)."""
    sums = torch.stack([moments(returns, mask), moments(returns.double() - values.double(), mask)])

    def combine(total: Tensor) -> Tensor:
        var_returns = _variance(total[0])
        undefined = torch.full_like(var_returns, torch.nan)
        return torch.where(var_returns > 0, 1 - _variance(total[1]) / var_returns, undefined)

    return Pooled(sums, combine)


__all__ = ["Pooled", "moments", "pooled_explained_variance", "pooled_mean", "pooled_mean_of", "pooled_std"]
