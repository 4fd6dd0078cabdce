"""``IterationCheckpoint``: a ``ModelCheckpoint`` that counts PPO iterations, not optimizer steps.

Why: under manual optimization every optimizer step advances ``trainer.global_step``, and one PPO iteration
takes ``2 x ppo_epochs x mini-batches`` of them (plus one with ptx; a ragged last rollout fewer). So
``ModelCheckpoint(every_n_train_steps=N)`` saves at irregular iterations and can skip whole epochs. A PPO (or
GRPO) iteration is one training batch, so this callback counts training batches across epochs instead. It is
a ``ModelCheckpoint`` in everything else (``dirpath``, ``save_last``, ``save_top_k``, ``monitor``), and
``ckpt_path="last"`` resumes from it, mid-epoch exactly when the data module's loader saves its position
(:class:`~lightning_rlhf.data.resumable.ResumableDataLoader`).
"""

from __future__ import annotations

import os
from typing import Any, Literal

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint


def completed_iterations(trainer: Trainer) -> int:
    """Training batches (PPO iterations) the run has completed, over all epochs, resumed runs included.

    Read in ``on_train_batch_end``: Lightning counts the batch as ``processed`` right after its
    ``training_step`` (it becomes ``completed`` after the hook).
    """
    return int(trainer.fit_loop.epoch_loop.batch_progress.total.processed)


class IterationCheckpoint(ModelCheckpoint):
    """Save a checkpoint every ``every_n_iterations`` training batches (PPO iterations).

    The file names may use ``{iteration}`` beside ``{epoch}`` and ``{step}``; ``{iteration}`` is the number
    of iterations completed when the checkpoint was written (the first iteration of a resumed run is that
    number + 1).

    Args:
        every_n_iterations: save after every this many PPO iterations (training batches), counted over
            epochs, not restarted by an epoch.
        dirpath: where checkpoints go (None: ``<trainer.default_root_dir>/checkpoints``, one folder for the
            run and its resumptions, so a new launch with ``ckpt_path="last"`` finds the newest; a
            ``ModelCheckpoint`` would use the logger's version folder, which every launch makes anew).
        filename: checkpoint file name pattern.
        save_last: also keep ``last.ckpt`` (what ``ckpt_path="last"`` resumes from); ``"link"`` makes it a link.
        save_top_k: how many checkpoints to keep (-1: all; with ``monitor=None`` the newest ones).
        monitor: a logged metric that ranks the checkpoints (e.g. ``ppo/reward_mean``); None keeps the newest.
        mode: ``min`` or ``max`` of ``monitor``.
        verbose: log every save.
    """

    def __init__(
        self,
        every_n_iterations: int = 10,
        dirpath: str | None = None,
        filename: str = "{epoch}-{iteration}",
        save_last: bool | Literal["link"] | None = True,
        save_top_k: int = 1,
        monitor: str | None = None,
        mode: Literal["min", "max"] = "min",
        verbose: bool = False,
    ) -> None:
        if every_n_iterations < 1:
            raise ValueError(f"IterationCheckpoint.every_n_iterations must be >= 1, got {every_n_iterations}")
        # every_n_train_steps=0 and every_n_epochs=0 switch off ModelCheckpoint's own triggers
        super().__init__(dirpath=dirpath, filename=filename, monitor=monitor, verbose=verbose, save_last=save_last,
                         save_top_k=save_top_k, mode=mode, every_n_train_steps=0, every_n_epochs=0)
        self.every_n_iterations = every_n_iterations

    @property
    def state_key(self) -> str:
        return self._generate_state_key(monitor=self.monitor, mode=self.mode,
                                        every_n_iterations=self.every_n_iterations)

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._default_dirpath(trainer)
        super().setup(trainer, pl_module, stage)

    def _find_last_checkpoints(self, trainer: Trainer) -> set[str]:
        # ckpt_path="last" looks here before setup()
        self._default_dirpath(trainer)
        return super()._find_last_checkpoints(trainer)

    def _default_dirpath(self, trainer: Trainer) -> None:
        if self.dirpath is None:
            self.dirpath = os.path.realpath(os.path.join(trainer.default_root_dir, "checkpoints"))

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        """Save when the completed iteration count is a multiple of ``every_n_iterations``."""
        if completed_iterations(trainer) % self.every_n_iterations != 0 or self._should_skip_saving_checkpoint(trainer):
            return
        candidates = self._monitor_candidates(trainer)
        self._save_topk_checkpoint(trainer, candidates)
        self._save_last_checkpoint(trainer, candidates)

    def _monitor_candidates(self, trainer: Trainer) -> dict[str, torch.Tensor]:
        candidates = super()._monitor_candidates(trainer)
        candidates["iteration"] = torch.tensor(completed_iterations(trainer))
        return candidates
