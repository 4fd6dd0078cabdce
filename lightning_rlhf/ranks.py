"""Which rank this process is, for code that runs outside a Trainer (the pipeline, warning filters).

Inside a LightningModule or callback use ``trainer.global_rank``; this is for the places that have no trainer.
"""

from __future__ import annotations

import os


def process_rank() -> int:
    """This process's global rank: the process group's once it is initialized, else the launcher's environment
    (0 when not launched distributed).

    The process group comes first because ``RANK`` can be stale: a process that ran a DeepSpeed step sets
    ``RANK=0`` in its environment, and Lightning's launcher copies that environment into the ranks it starts
    for a later multi-rank step (only ``LOCAL_RANK`` is set per child), so every rank would read 0.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    for name in ("RANK", "SLURM_PROCID", "LOCAL_RANK"):
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return 0
