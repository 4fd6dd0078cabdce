"""Where frozen children (reference, reward model) are built under ZeRO-3: their own ``zero.Init``.

Why: ZeRO-3 decides where a parameter's partition lives when the parameter is created, from the ``zero.Init``
that is open (its ``remote_device``). Built inside the training ``zero.Init`` (the strategy's sharded context),
the frozen models' partitions land on the accelerator, and DeepSpeed never moves a parameter that is already
partitioned, whatever the frozen engine's config says later. DeepSpeed-Chat therefore builds its reference
model under a config of its own with ``offload_param`` on the CPU; :func:`frozen_models_init` does the same
inside the training context by setting that context aside for the block.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator, Mapping


@contextmanager
def suspended_zero_init() -> Iterator[None]:
    """Set the open ``deepspeed.zero.Init`` aside for the block (a new one opened inside is then the top level).

    DeepSpeed applies only the outermost ``zero.Init``: a nested one's ``remote_device`` and config are ignored.
    """
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
    """Partition the models built in the block as the frozen engines' ZeRO-3 config says (offload: on the CPU).

    Args:
        frozen_config: the DeepSpeed config of the inference-only engines (``engines.inference_config``); with
            ``offload_param`` on the CPU, every partition of a model built here is created on the CPU, except
            the small parameters ZeRO keeps whole on the accelerator (``stage3_param_persistence_threshold``).
    """
    import deepspeed

    offload = ((frozen_config.get("zero_optimization") or {}).get("offload_param") or {}).get("device", "none")
    with suspended_zero_init(), deepspeed.zero.Init(
        config_dict_or_path=dict(frozen_config), remote_device=offload if offload != "none" else None
    ):
        yield
