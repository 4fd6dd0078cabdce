"""A callback that crashes a run at a chosen PPO iteration, as a killed job would stop (used by resume tests)."""

from __future__ import annotations

from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer


class Killed(RuntimeError):
    """The crash :class:`CrashAtIteration` raises."""


class CrashAtIteration(Callback):
    """Raise :class:`Killed` when iteration ``iteration`` starts (after ``iteration - 1`` have completed).

    Args:
        iteration: the 1-based PPO iteration (training batch, counted over epochs) that never finishes.
    """

    def __init__(self, iteration: int) -> None:
        self.iteration = iteration

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        if trainer.fit_loop.epoch_loop.batch_progress.total.processed + 1 == self.iteration:
            raise Killed(f"killed at the start of iteration {self.iteration} (epoch {trainer.current_epoch}, "
                         f"batch {batch_idx})")
