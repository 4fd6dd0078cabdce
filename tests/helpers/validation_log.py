"""A callback that appends every validation run (entry point, global step, ``val/*`` metrics) to a JSON-lines file.

Why: the pipeline builds its trainers from config, so a test sees what they ran only through a callback named
in that config (``--sft.trainer.callbacks``).
"""

from __future__ import annotations

import json
from pathlib import Path

from lightning.pytorch import Callback


class ValidationLog(Callback):
    def __init__(self, path: str) -> None:
        self.path = Path(path)

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        record = {"fn": str(trainer.state.fn.value), "global_step": trainer.global_step,
                  "metrics": {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}}
        with self.path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
