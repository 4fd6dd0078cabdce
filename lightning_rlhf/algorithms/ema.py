"""Exponential moving average of model parameters (DeepSpeed-Chat's ``moving_average``, beta 0.992)."""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def ema_update(ema_model: nn.Module, model: nn.Module, decay: float = 0.992) -> None:
    """``ema <- decay * ema + (1 - decay) * param`` for every parameter pair, in place on ``ema_model``.

    ``model`` is only read. Parameter names must match (the EMA is a copy of ``model``).

    Args:
        ema_model: the running average, updated in place.
        model: the model being trained.
        decay: weight of the old average, in ``[0, 1]``.
    """
    if not 0.0 <= decay <= 1.0:
        raise ValueError(f"EMA decay must be in [0, 1], got {decay}")
    params = dict(model.named_parameters())
    for name, ema_param in ema_model.named_parameters():
        if name not in params:
            raise KeyError(f"EMA parameter {name!r} has no counterpart in the trained model")
        ema_param.lerp_(params[name].detach().to(ema_param.dtype), 1.0 - decay)
