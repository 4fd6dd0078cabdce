"""Where models live: the hybrid DeepSpeed strategy, its engines and its generation switch."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

import torch
from torch import nn

from lightning_rlhf.strategies.checkpoint_folder import consolidated_state_dict, export_engine_to_hf
from lightning_rlhf.strategies.hybrid_deepspeed import HybridDeepSpeedStrategy

__all__ = [
    "HybridDeepSpeedStrategy",
    "MultiEngineBackwardMixin",
    "consolidated_state_dict",
    "export_engine_to_hf",
    "frozen_models",
    "generation_mode",
    "register_strategies",
]


def register_strategies() -> None:
    """Register ``hybrid_deepspeed`` and its presets with Lightning (idempotent; runs on ``import lightning_rlhf``)."""
    from lightning.pytorch.strategies import StrategyRegistry

    HybridDeepSpeedStrategy.register_strategies(StrategyRegistry)


@contextmanager
def generation_mode(strategy: Any, model: nn.Module) -> Iterator[Any]:
    """Generate with ``model`` under any strategy.

    Under :class:`HybridDeepSpeedStrategy` this is its generation switch; under Lightning's other strategies
    the model itself is put in eval mode for the block and its training mode restored afterwards.
    """
    if hasattr(strategy, "generation_mode"):
        with strategy.generation_mode(model) as replica:
            yield replica
        return
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield model
    finally:
        model.train(was_training)


@contextmanager
def frozen_models(strategy: Any) -> Iterator[None]:
    """Build a module's frozen children (reference, reward model) in this block, under any strategy.

    Under :class:`HybridDeepSpeedStrategy` with ``offload_frozen_models`` and ZeRO-3 their partitions are created
    on the CPU; under every other strategy and setting it changes nothing.
    """
    context = getattr(strategy, "frozen_models_context", None)
    if context is None:
        yield
        return
    with context():
        yield


class MultiEngineBackwardMixin:
    """Lets a manual-optimization module write ``self.manual_backward(loss, opt)`` under every strategy.

    :class:`HybridDeepSpeedStrategy` uses the optimizer argument to route the backward pass to the engine that
    owns it; Lightning's other strategies would hand it on to ``loss.backward``, so this drops it there.
    """

    def backward(self, loss: Any, *args: Any, **kwargs: Any) -> None:
        from lightning.pytorch.core.optimizer import LightningOptimizer
        from torch.optim import Optimizer

        if args and isinstance(args[0], (Optimizer, LightningOptimizer)):
            args = args[1:]
        loss.backward(*args, **kwargs)
