"""A callback that records time per training step and peak resident memory, for the real-model slow tier; the
peak bytes of tensors a block keeps alive.

Why a callback in the trainer config rather than timing the whole fit: the pipeline's fit time includes
engine set-up, validation and export, while a user sizing a run wants seconds per optimizer step.
"""

from __future__ import annotations

import json
import math
import resource
import time
import weakref
from pathlib import Path

import torch
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


class PeakTensorBytes:
    """Peak bytes of tensor storage created and alive inside the block (CPU or any device), e.g. a rollout's logits.

    ``with PeakTensorBytes() as peak: ...; peak.bytes``. Every tensor an ATen op returns inside the block is
    counted once per storage while a Python reference to it (or to a view of it) lives; tensors created before
    the block (weights) are not counted. A real measurement of what is retained, without a CUDA allocator.
    """

    def __init__(self) -> None:
        self.bytes = self.live = 0
        self._refs: dict[int, int] = {}  # storage pointer -> live tensors over it
        self._mode = None

    def __enter__(self) -> "PeakTensorBytes":
        from torch.utils._python_dispatch import TorchDispatchMode

        tracker = self

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                for tensor in out if isinstance(out, (tuple, list)) else [out]:
                    if isinstance(tensor, torch.Tensor):
                        tracker._track(tensor)
                return out

        self._mode = Mode()
        self._mode.__enter__()
        return self

    def _track(self, tensor: "torch.Tensor") -> None:
        storage = tensor.untyped_storage()
        key, size = storage.data_ptr(), storage.nbytes()
        if key == 0 or size == 0:
            return
        if key not in self._refs:
            self._refs[key] = 0
            self.live += size
            self.bytes = max(self.bytes, self.live)
        self._refs[key] += 1
        weakref.finalize(tensor, self._release, key, size)

    def _release(self, key: int, size: int) -> None:
        self._refs[key] -= 1
        if self._refs[key] == 0:
            del self._refs[key]
            self.live -= size

    def __exit__(self, *exc) -> None:
        self._mode.__exit__(*exc)
