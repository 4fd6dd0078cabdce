"""Where frozen children (reference, reward model) are built under ZeRO-3: their own ``zero.Init``.

ZeRO-3 places a partition when the parameter is created and never moves it, so offloaded frozen models must be
built under a ``zero.Init`` of their own (as DeepSpeed-Chat does), not the training one.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator, Mapping


@contextmanager
def suspended_zero_init() -> Iterator[None]:
    """Set the open ``zero.Init`` aside for the block: DeepSpeed ignores a nested one's ``remote_device``."""
    from deepspeed.runtime.zero import partition_parameters as zero

    outer, depth = zero.top_level_context, zero.zero_init_context
    if outer is None:
        yield
        return
    outer.unpatch_init_and_builtins()
    zero.top_level_context, zero.zero_init_context = None, 0
    try:
        yield
    finally:
        zero.top_level_context, zero.zero_init_context = outer, depth
        outer.patch_init_and_builtins()


@contextmanager
def frozen_models_init(frozen_config: Mapping[str, Any]) -> Iterator[None]:
    """Partition the models built in the block as ``frozen_config`` (the frozen engines') says: offload on the CPU."""
    import deepspeed

    offload = ((frozen_config.get("zero_optimization") or {}).get("offload_param") or {}).get("device", "none")
    with suspended_zero_init(), deepspeed.zero.Init(
        config_dict_or_path=dict(frozen_config), remote_device=offload if offload != "none" else None
    ):
        yield
