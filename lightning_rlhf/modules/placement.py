"""Where a module's models are built: inside the strategy's ZeRO-3 context, so they are partitioned as created."""

from __future__ import annotations

from typing import Any

from lightning_rlhf.models.loading import zero3_loading


def attached_strategy(module: Any) -> Any:
    """The strategy of the Trainer ``module`` is attached to; None for a module used without a Trainer."""
    trainer = getattr(module, "_trainer", None)
    return trainer.strategy if trainer is not None else None


def sharded_loading(module: Any) -> Any:
    """Under a ZeRO-3 strategy its ``zero3_loading`` (a rank never holds a whole model), else a no-op."""
    strategy = attached_strategy(module)
    return zero3_loading(getattr(strategy, "config", None) if getattr(strategy, "zero_stage_3", False) else None)
