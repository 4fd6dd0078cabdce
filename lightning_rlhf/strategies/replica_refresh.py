"""Which parameters behind a generation replica changed since its last refresh, from each rank's own shards.

Why: entering ``generation_mode`` copies the model into its replica, and under ZeRO-3 that means all-gathering
every partition (2 bytes x parameters per rank over the network, ``tp_gather_partition_size`` layers at a time).
Between two entries without an optimizer step (every validation batch, several rollouts per step) nothing
changed, and a LoRA-trained model changes only in the layers whose adapters moved. A fingerprint of what each
rank holds locally (its partitions, or the whole tensor without ZeRO-3) costs one read of those bytes and no
communication; one flag per parameter is then all-reduced, so every rank decides alike which groups to re-gather
and what of them (the gather is a collective): a group whose only changes are LoRA adapters gathers just those
(:mod:`.lora_refresh`). The fingerprint is the float64 sum and sum of squares of each tensor:
an optimizer step, a checkpoint load or an EMA swap changes them.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.distributed as dist
from torch import nn

from lightning_rlhf.models.zero3 import is_partitioned, local_partition


def fingerprint(params: Sequence[nn.Parameter]) -> torch.Tensor:
    """``(2 * len(params),)`` float64: sum and sum of squares of each parameter's local tensor."""
    values = []
    for param in params:
        local = local_partition(param)
        values += [torch.sum(local, dtype=torch.float64), torch.sum(local.double().square())]
    return torch.stack([v.cpu() for v in values]) if values else torch.zeros(0, dtype=torch.float64)


class ChangedParameters:
    """Remembers each parameter's fingerprint at the last refresh and says which parameters changed since."""

    def __init__(self) -> None:
        self._seen: list[Optional[torch.Tensor]] = []
        self._pending: list[torch.Tensor] = []

    def changed(self, groups: Sequence[Sequence[nn.Parameter]], device: torch.device) -> list[list[bool]]:
        """One flag per parameter of each group, the same on every rank (collective when any parameter is ZeRO-3
        partitioned: one all-reduce of all the flags).

        Args:
            groups: the parameters (sources and their LoRA adapters) of each gather group, in a fixed order.
            device: where the flags are all-reduced (the replica's device, which the process group can reach).
        """
        self._pending = [fingerprint(group) for group in groups]
        seen = self._seen if len(self._seen) == len(groups) else [None] * len(groups)
        flags = [torch.ones(len(group), dtype=torch.bool) if old is None or old.shape != new.shape
                 else (old != new).view(-1, 2).any(dim=1) for group, old, new in zip(groups, seen, self._pending)]
        flat = torch.cat(flags).to(device=device, dtype=torch.int32) if flags else torch.zeros(0, dtype=torch.int32)
        partitioned = any(is_partitioned(p) for group in groups for p in group)
        if partitioned and dist.is_available() and dist.is_initialized():
            dist.all_reduce(flat, op=dist.ReduceOp.MAX)
        return [[bool(f) for f in part.tolist()] for part in flat.split([len(group) for group in groups])]

    def refreshed(self) -> None:
        """The changed parameters were copied into the replica: their fingerprints from :meth:`changed` become the
        reference."""
        self._seen = self._pending
