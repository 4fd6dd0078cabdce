"""Which gather groups of a generation replica changed since its last refresh, from each rank's own shards.

Why: entering ``generation_mode`` copies the model into its replica, and under ZeRO-3 that means all-gathering
every partition (2 bytes x parameters per rank over the network, ``tp_gather_partition_size`` layers at a time).
Between two entries without an optimizer step (every validation batch, several rollouts per step) nothing
changed, and a LoRA-trained model changes only in the layers whose adapters moved. A fingerprint of what each
rank holds locally (its partitions, or the whole tensor without ZeRO-3) costs one read of those bytes and no
communication; one flag per group is then all-reduced, so every rank re-gathers exactly the groups that changed
on any rank (the gather is a collective). The fingerprint is the float64 sum and sum of squares of each tensor:
an optimizer step, a checkpoint load or an EMA swap changes them.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.distributed as dist
from torch import nn

from lightning_rlhf.models.zero3 import is_partitioned


def local_tensor(param: nn.Parameter) -> torch.Tensor:
    """What this rank holds of ``param``: its ZeRO-3 partition, else the tensor itself."""
    return param.ds_tensor if is_partitioned(param) else param.data


def fingerprint(params: Sequence[nn.Parameter]) -> torch.Tensor:
    """``(2 * len(params),)`` float64: sum and sum of squares of each parameter's local tensor."""
    values = []
    for param in params:
        local = local_tensor(param)
        values += [torch.sum(local, dtype=torch.float64), torch.sum(local.double().square())]
    return torch.stack([v.cpu() for v in values]) if values else torch.zeros(0, dtype=torch.float64)


class ChangedGroups:
    """Remembers each group's fingerprint at the last refresh and says which groups changed since."""

    def __init__(self) -> None:
        self._seen: list[Optional[torch.Tensor]] = []
        self._pending: list[torch.Tensor] = []

    def changed(self, groups: Sequence[Sequence[nn.Parameter]], device: torch.device) -> list[bool]:
        """One flag per group, the same on every rank (collective when any parameter is ZeRO-3 partitioned).

        Args:
            groups: the source parameters (with their LoRA adapters) of each gather group, in a fixed order.
            device: where the flags are all-reduced (the replica's device, which the process group can reach).
        """
        self._pending = [fingerprint(group) for group in groups]
        seen = self._seen if len(self._seen) == len(groups) else [None] * len(groups)
        flags = torch.tensor([old is None or not torch.equal(old, new) for old, new in zip(seen, self._pending)],
                             dtype=torch.int32, device=device)
        partitioned = any(is_partitioned(p) for group in groups for p in group)
        if partitioned and dist.is_available() and dist.is_initialized():
            dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        return [bool(f) for f in flags.tolist()]

    def refreshed(self) -> None:
        """The groups were copied into the replica: their fingerprints from :meth:`changed` become the reference."""
        self._seen = self._pending
