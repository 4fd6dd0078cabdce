"""Which parameters behind a generation replica changed since its last refresh, from each rank's own shards.

Re-gathering unchanged ZeRO-3 partitions is wasted network traffic. Each rank fingerprints its local shards (sum
and sum of squares, no communication); one all-reduce of the flags makes every rank re-gather the same groups.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.distributed as dist
from torch import nn

from lightning_rlhf.models.zero3 import is_partitioned, local_partition


#: elements per chunk of a fingerprint: its float64 transient stays this small whatever the parameter's size
FINGERPRINT_CHUNK = 1 << 20


def fingerprint(params: Sequence[nn.Parameter]) -> torch.Tensor:
    """``(2 * len(params),)`` float64: sum and sum of squares of each parameter's local tensor, accumulated over
    chunks (a whole-tensor float64 copy was two copies of the largest weight at every generation entry)."""
    values = []
    for param in params:
        flat = local_partition(param).reshape(-1)
        total = flat.new_zeros((), dtype=torch.float64)
        squares = flat.new_zeros((), dtype=torch.float64)
        for chunk in flat.split(FINGERPRINT_CHUNK):
            wide = chunk.double()
            total += wide.sum()
            squares += wide.square().sum()
        values += [total, squares]
    return torch.stack([v.cpu() for v in values]) if values else torch.zeros(0, dtype=torch.float64)


class ChangedParameters:
    """Remembers each parameter's fingerprint at the last refresh and says which parameters changed since."""

    def __init__(self) -> None:
        self._seen: list[Optional[torch.Tensor]] = []
        self._pending: list[torch.Tensor] = []

    def changed(self, groups: Sequence[Sequence[nn.Parameter]], device: torch.device) -> list[list[bool]]:
        """One flag per parameter of each group, the same on every rank (an all-reduce under ZeRO-3)."""
        self._pending = [fingerprint(group) for group in groups]
        seen = self._seen if len(self._seen) == len(groups) else [None] * len(groups)
        flags = [torch.ones(len(group), dtype=torch.bool) if old is None or old.shape != new.shape
                 else (old != new).view(-1, 2).any(dim=1) for group, old, new in zip(groups, seen, self._pending)]
        flat = torch.cat(flags).to(device=device, dtype=torch.int32) if flags else torch.zeros(0, dtype=torch.int32)
        partitioned = any(is_partitioned(p) for group in groups for p in group)
        if partitioned and dist.is_available() and dist.is_initialized():
            dist.all_reduce(flat, op=dist.ReduceOp.MAX)
        return [[bool(f) for f in part.tolist()] for part in flat.split([len(group) for group in groups])]

    def forget(self) -> None:
        """Count every parameter as changed at the next :meth:`changed` (what they compute from changed, not them)."""
        self._seen = []

    def refreshed(self) -> None:
        """The changed parameters were copied: their fingerprints from :meth:`changed` become the reference."""
        self._seen = self._pending
