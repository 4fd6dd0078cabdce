"""For the per-rank resume test: a reward function that records each rank's answers, and a callback that stops a
run after a number of iterations (as a kill would, right after a checkpoint)."""

from __future__ import annotations

import json
import os

import torch.distributed as dist
from lightning.pytorch.callbacks import Callback


def recording_reward(prompts, completions, **kwargs):
    """Append this rank's answers to ``$ROLLOUT_RECORD-rank<R>.jsonl``; any score will do."""
    rank = dist.get_rank() if dist.is_initialized() else 0
    with open(f"{os.environ['ROLLOUT_RECORD']}-rank{rank}.jsonl", "a") as handle:
        handle.write(json.dumps({"prompts": list(prompts), "completions": list(completions)}) + "\n")
    return [float(len(c) % 3) for c in completions]


class StopAfter(Callback):
    """Stop fit after ``iterations`` training batches."""

    def __init__(self, iterations: int) -> None:
        self.iterations = iterations

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.fit_loop.epoch_loop.total_batch_idx + 1 >= self.iterations:
            trainer.should_stop = True


class RankSkew(Callback):
    """Advance each rank's sampling RNG by a different amount at the start, as ranks drift apart in a real run
    (answers stopping at different lengths); a resumed run then restores each rank's own state over it."""

    def on_train_start(self, trainer, pl_module) -> None:
        import torch

        torch.rand(1 + 7 * trainer.global_rank)


class SigtermAt(Callback):
    """Send SIGTERM to this process at the start of training batch ``iteration`` (1-based) on ``ranks``, as a
    cluster preempting the job would (to one rank first, here)."""

    def __init__(self, iteration: int, ranks: list[int]) -> None:
        self.iteration, self.ranks = iteration, ranks

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        import signal

        if trainer.fit_loop.epoch_loop.total_batch_idx + 1 == self.iteration and trainer.global_rank in self.ranks:
            os.kill(os.getpid(), signal.SIGTERM)
