"""Which parameters one gather group of a replica reads, and when its LoRA-merged weights can be refreshed from
the adapters alone (kept base shard + gathered adapters), sparing a ZeRO-3 all-gather of the frozen base.

Exact only while the base is unchanged, so any other change in the group copies it whole.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

from torch import nn


def adapter_parameters(owner: nn.Module) -> list[nn.Parameter]:
    """The parameters of a peft LoRA layer that are not its wrapped base layer's."""
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
        """The slots to re-merge from kept base and adapters, or None when the group must be copied whole.

        ``changed`` (per parameter) and ``has_base`` (per slot) are the same on every rank.
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
