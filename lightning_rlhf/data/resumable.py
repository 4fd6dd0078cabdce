"""``ResumableDataLoader``: a DataLoader that saves its place in the epoch, so a resumed run does not replay the
epoch's first batches (docs/cli.md). On resume it draws the same order and skips the batches already trained on.

The position lives in a :class:`DataPosition` saved by the data module's own ``state_dict``: Lightning's stateful-loader
state reaches only a loader built after the restore, and ``trainer.estimated_stepping_batches`` builds it before.
The count is exact, as Lightning fetches a sized loader's batches one at a time, without prefetching.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

import torch
from torch.utils.data import DataLoader, DistributedSampler


class DataPosition:
    """The training loader's place in its epoch, owned and checkpointed by the data module."""

    def __init__(self) -> None:
        self.loader: ResumableDataLoader | None = None  # Lightning may have re-made the loader
        self.pending: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        return self.loader.position() if self.loader is not None else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.pending = dict(state_dict) if state_dict else None


class ResumableDataLoader(DataLoader):
    """A ``DataLoader`` that starts where :class:`DataPosition` says and keeps it up to date.

    Args:
        *args: ``DataLoader`` arguments.
        position: the position holder shared with the data module (None: a private one).
        epoch_length: batches the training loop takes per epoch (``trainer.num_training_batches``); None: ``len``.
        **kwargs: ``DataLoader`` keyword arguments.
    """

    def __init__(self, *args: Any, position: DataPosition | None = None,
                 epoch_length: Callable[[], float] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.position_holder = position if position is not None else DataPosition()
        self.epoch_length = epoch_length
        self._yielded = 0
        self._epoch_start: torch.Tensor | None = None

    @property
    def world_size(self) -> int:
        return self.sampler.num_replicas if isinstance(self.sampler, DistributedSampler) else 1

    def position(self) -> dict[str, Any]:
        return {"batches": self._yielded, "epoch_start_generator": self._epoch_start,
                "generator": self.generator.get_state() if self.generator is not None else None,
                "world_size": self.world_size, "batch_size": self.batch_size}

    def state_dict(self) -> dict[str, Any]:
        """For Lightning's stateful-loader support, which then knows that the loader resumes."""
        return self.position()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Resume at ``state_dict`` unless the data module's :class:`DataPosition` already holds a position."""
        if self.position_holder.pending is None and state_dict:
            self.position_holder.load_state_dict(state_dict)

    def _check(self, saved: dict[str, Any]) -> None:
        was = (saved.get("world_size"), saved.get("batch_size"))
        if was != (self.world_size, self.batch_size):
            raise ValueError(
                f"The checkpoint's data position was saved by {was[0]} rank(s) with batch size {was[1]} per "
                f"rank; this run has {self.world_size} rank(s) with batch size {self.batch_size}, so the position "
                f"(batch {saved.get('batches')} of the epoch) names other data. Resume with "
                f"trainer.devices/num_nodes giving {was[0]} rank(s) and data.batch_size {was[1]}, or start a "
                "new run from the exported weights."
            )

    def __iter__(self) -> Iterator[Any]:
        # lazily, at the first batch: after Lightning has restored the checkpoint and set the sampler's epoch
        return self._batches()

    def _batches(self) -> Iterator[Any]:
        holder = self.position_holder
        skip, pending, holder.pending, holder.loader = 0, holder.pending, None, self
        if pending is not None:
            self._check(pending)
            length = self.epoch_length() if self.epoch_length is not None else len(self)
            mid_epoch = pending["batches"] < length
            skip = pending["batches"] if mid_epoch else 0
            state = pending["epoch_start_generator"] if mid_epoch else pending["generator"]
            if self.generator is not None and state is not None:
                self.generator.set_state(state)
        if self.generator is not None:
            self._epoch_start = self.generator.get_state()
        self._yielded = 0
        iterator = super().__iter__()
        for done in range(skip):
            if next(iterator, None) is None:
                raise ValueError(f"The checkpoint's data position is batch {skip} of the epoch, but this epoch has only "
                                 f"{done} batches: the training data changed since the checkpoint. Resume with the "
                                 "same data, or start a new run from the exported weights.")
        self._yielded = skip
        for batch in iterator:
            self._yielded += 1
            yield batch
