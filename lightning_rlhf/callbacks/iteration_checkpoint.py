"""Checkpoints counted in training batches (PPO iterations), not optimizer steps."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from lightning_rlhf.strategies.checkpoint_folder import interrupted_publish


def trained_iterations(trainer: Trainer) -> int:
    """Training batches completed so far, across epochs (restored on resume): PPO iterations for PPO."""
    return trainer.fit_loop.epoch_loop.total_batch_idx + 1


class IterationCheckpoint(ModelCheckpoint):
    """A :class:`~lightning.pytorch.callbacks.ModelCheckpoint` that saves every ``every_n_iterations`` batches.

    One PPO iteration is many optimizer steps, so ``every_n_train_steps`` lands irregularly (docs/cli.md).

    Args:
        every_n_iterations: save after every this many training batches (PPO iterations).
        filename: checkpoint file name template; ``{iteration}`` is the iteration count.
        every_n_epochs: also save at the end of every this many epochs (0: only by iteration).
        **kwargs: any other ``ModelCheckpoint`` argument; ``dirpath`` defaults to
            ``<trainer.default_root_dir>/checkpoints`` and ``save_last`` to True.
    """

    def __init__(self, every_n_iterations: int = 10, filename: str | None = "{epoch}-{iteration}",
                 every_n_epochs: int | None = 0, **kwargs: Any) -> None:
        if every_n_iterations < 1:
            raise ValueError(f"IterationCheckpoint.every_n_iterations must be >= 1, got {every_n_iterations}")
        if kwargs.get("save_last") is None:  # LightningCLI passes None
            kwargs["save_last"] = True
        super().__init__(filename=filename or "{epoch}-{iteration}", every_n_epochs=every_n_epochs or 0, **kwargs)
        self.every_n_iterations = every_n_iterations

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._default_dirpath(trainer)
        super().setup(trainer, pl_module, stage)

    def _find_last_checkpoints(self, trainer: Trainer) -> set[str]:
        """Lightning's ``last`` checkpoints, and the complete one a save killed mid-replacement left instead."""
        self._default_dirpath(trainer)  # ckpt_path="last" looks here before setup()
        found = super()._find_last_checkpoints(trainer)
        if not found and self.dirpath is not None and os.path.isdir(self.dirpath):
            last = Path(self.dirpath) / f"{self.CHECKPOINT_NAME_LAST}{self.FILE_EXTENSION}"
            recovered = interrupted_publish(last)
            if recovered is not None:
                rank_zero_warn(f"{last} is missing: a save was killed while replacing it; resuming from {recovered}")
                found = {str(recovered)}
        return found

    def _default_dirpath(self, trainer: Trainer) -> None:
        if self.dirpath is None:
            self.dirpath = os.path.realpath(os.path.join(trainer.default_root_dir, "checkpoints"))

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args: Any, **kwargs: Any) -> None:
        preempted = getattr(trainer.strategy, "preemption_requested", None)
        if preempted is not None and preempted():  # SIGTERM (a cluster's preemption): save once, stop
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
            trainer.should_stop = True
            rank_zero_info(f"IterationCheckpoint: SIGTERM received; saved {self.last_model_path} after iteration "
                           f"{trained_iterations(trainer)} and stopping (resume with ckpt_path=\"last\")")
            return
        if self._should_skip_saving_checkpoint(trainer) or trained_iterations(trainer) % self.every_n_iterations:
            return
        candidates = self._monitor_candidates(trainer)
        self._save_topk_checkpoint(trainer, candidates)
        self._save_last_checkpoint(trainer, candidates)

    def _monitor_candidates(self, trainer: Trainer) -> dict[str, torch.Tensor]:
        candidates = super()._monitor_candidates(trainer)
        candidates.setdefault("iteration", torch.tensor(trained_iterations(trainer)))
        return candidates
