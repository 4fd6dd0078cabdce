"""A callback that records time per training step and peak resident memory, for the real-model slow tier.

Why a callback in the trainer config rather than timing the whole fit: the pipeline's fit time includes
engine set-up, validation and export, while a user sizing a run wants seconds per optimizer step.
"""

from __future__ import annotations

import json
import math
import resource
import time
from pathlib import Path

from lightning.pytorch import Callback, LightningModule, Trainer


def peak_rss_mib() -> float:
    """This process's peak resident set size so far, in MiB (Linux reports ``ru_maxrss`` in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class StepResources(Callback):
    """Write ``<dirpath>/<name>-rank<R>.json``: seconds of each training step, peak RSS, final metrics.

    Args:
        dirpath: folder for the JSON files.
        name: the step's name in the file name (``sft``, ``reward``, ``ppo``).
    """

    def __init__(self, dirpath: str, name: str) -> None:
        self.dirpath, self.name = Path(dirpath), name
        self.step_seconds: list[float] = []
        self._start = 0.0

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch, batch_idx: int) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int) -> None:
        self.step_seconds.append(time.perf_counter() - self._start)

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if getattr(v, "numel", lambda: 1)() == 1}
        result = {"step": self.name, "rank": trainer.global_rank, "step_seconds": self.step_seconds,
                  "peak_rss_mib": peak_rss_mib(), "metrics": {k: v if math.isfinite(v) else str(v)
                                                              for k, v in metrics.items()}}
        self.dirpath.mkdir(parents=True, exist_ok=True)
        (self.dirpath / f"{self.name}-rank{trainer.global_rank}.json").write_text(json.dumps(result, indent=1))
