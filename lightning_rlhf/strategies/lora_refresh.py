"""Which parameters one gather group of a replica reads, and when its LoRA-merged weights can be refreshed from
the adapters alone.

Why: with LoRA only the adapters train, yet the replica holds merged weights ``W + s * B @ A``; refreshing them
from the model would all-gather the frozen ``W`` (ZeRO-3) after every optimizer step. A replica that keeps its own
shard of ``W`` (as laid out in the replica, in the replica's dtype) needs only the adapters, which are tiny. That
is exact only while ``W`` is unchanged since the copy was taken, so the decision rests on the per-parameter change
flags of :mod:`.replica_refresh`, which are the same on every rank: any other change in the group (a base weight,
a bias, a norm: full fine-tuning, a checkpoint load, an EMA swap) copies the group whole, as without LoRA.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

from torch import nn


def adapter_parameters(owner: nn.Module) -> list[nn.Parameter]:
    """The parameters of a peft LoRA layer that are not its wrapped base layer's (``lora_A``/``lora_B``, embedding
    adapters, any other adapter state)."""
    base = getattr(owner, "base_layer", None)
    frozen = {id(p) for p in base.parameters()} if base is not None else set()
    return [p for p in owner.parameters() if id(p) not in frozen]


@dataclass
class GroupSources:
    """The model parameters one gather group's copy reads, each once, in a fixed order.

    Attributes:
        params: every slot's source, then the adapters of the slots with a LoRA owner.
        adapters: slot index (in the group) -> indices in ``params`` of its owner's adapter parameters.
    """

    params: list[nn.Parameter]
    adapters: dict[int, list[int]]

    @classmethod
    def of(cls, slots: Sequence[Any]) -> "GroupSources":
        """From a group's slots (anything with ``source`` and ``lora_owner``, see ``tensor_parallel._Slot``)."""
        params: list[nn.Parameter] = []
        index: dict[int, int] = {}

        def add(param: nn.Parameter) -> int:
            if id(param) not in index:
                index[id(param)] = len(params)
                params.append(param)
            return index[id(param)]

        for slot in slots:
            add(slot.source)
        adapters = {i: [add(p) for p in adapter_parameters(slot.lora_owner)]
                    for i, slot in enumerate(slots) if slot.lora_owner is not None}
        return cls(params, adapters)

    def adapter_only(self, changed: Sequence[bool], has_base: Sequence[bool]) -> Optional[list[int]]:
        """The slots to re-merge from their kept base and their adapters (none if nothing changed), or None when the
        group must be copied whole.

        Args:
            changed: one flag per parameter of ``params`` (all-reduced: the same on every rank).
            has_base: per slot of the group, whether it keeps its base shard (the same on every rank: taken at
                full copies).
        """
        owner_of = {p: slot for slot, indices in self.adapters.items() for p in indices}
        moved = [i for i, flag in enumerate(changed) if flag]
        if any(i not in owner_of for i in moved):
            return None
        slots = sorted({owner_of[i] for i in moved})
        return slots if all(has_base[slot] for slot in slots) else None

    def adapters_of(self, slots: Sequence[int]) -> list[nn.Parameter]:
        """The adapter parameters of ``slots`` (what an adapter-only refresh gathers)."""
        return [self.params[i] for slot in slots for i in self.adapters[slot]]
