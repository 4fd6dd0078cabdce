"""This process's rank for code that runs outside a Trainer (the pipeline, warning filters)."""

from __future__ import annotations

import os


def process_rank() -> int:
    """This process's global rank: the process group's once initialized, else the launcher's environment (or 0).

    The group comes first: a rank Lightning starts after an earlier DeepSpeed step inherits a stale ``RANK=0``.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    for name in ("RANK", "SLURM_PROCID", "LOCAL_RANK"):
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return 0
