"""Loading pretrained models while DeepSpeed ZeRO-3 partitions every new parameter (``deepspeed.zero.Init``).

transformers handles empty partitioned tensors only with a registered ``HfDeepSpeedConfig`` (else its init fails
with ``IndexError ... with size 0``); these helpers register one whoever opened the ``zero.Init``.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Any, Iterator

import torch
from torch import nn


def _active_zero_init() -> Any | None:
    """The outermost active ``deepspeed.zero.Init`` (None when none is open or DeepSpeed was never imported)."""
    zero = sys.modules.get("deepspeed.runtime.zero.partition_parameters")
    return getattr(zero, "top_level_context", None) if zero is not None else None


def is_partitioned(param: torch.Tensor) -> bool:
    """Whether ``param`` is partitioned by DeepSpeed ZeRO-3 (its local tensor is then empty)."""
    return hasattr(param, "ds_id")


def local_partition(param: torch.Tensor) -> torch.Tensor:
    """The filled part of this rank's ZeRO-3 partition of ``param`` (the padding is uninitialised, maybe NaN)."""
    if not is_partitioned(param):
        return param.data
    import torch.distributed as dist

    shard = param.ds_tensor
    group = getattr(param, "ds_process_group", None)
    rank = dist.get_rank(group=group) if dist.is_available() and dist.is_initialized() else 0
    size = shard.numel()
    return shard.narrow(0, 0, min(max(param.ds_numel - rank * size, 0), size))


def release_gathered(params: list[torch.Tensor]) -> None:
    """Free the gathered copy of ZeRO-3 parameters that hold one (persistent ones, under the persistence threshold).

    Such a parameter is used from ``param.data`` and never re-gathered from its shard, so a write to the shard alone
    (an EMA swap) would not be seen; released, it is gathered from the shards at its next use. No communication.
    """
    from deepspeed.runtime.zero.partition_parameters import ZeroParamStatus

    gathered = [p for p in params if is_partitioned(p) and p.ds_status == ZeroParamStatus.AVAILABLE]
    if gathered:
        gathered[0].partition(param_list=gathered, has_been_updated=False)


@contextmanager
def zero3_loading(deepspeed_config: dict[str, Any] | None) -> Iterator[None]:
    """Register a ``HfDeepSpeedConfig`` for the block so ``from_pretrained`` loads partitioned (ZeRO-3 only)."""
    stage = ((deepspeed_config or {}).get("zero_optimization") or {}).get("stage", 0)
    if stage != 3:
        yield
        return
    from transformers.integrations.deepspeed import (
        HfDeepSpeedConfig,
        is_deepspeed_zero3_enabled,
        unset_hf_deepspeed_config,
    )

    if is_deepspeed_zero3_enabled():
        yield
        return
    config = dict(deepspeed_config)
    config.setdefault("train_micro_batch_size_per_gpu", 1)
    keep_alive = HfDeepSpeedConfig(config)  # transformers holds only a weak reference
    try:
        yield
    finally:
        del keep_alive
        unset_hf_deepspeed_config()


def _config_of(init: Any) -> dict[str, Any]:
    """A minimal ZeRO-3 config matching an open ``zero.Init`` (which keeps no config dict of its own)."""
    config: dict[str, Any] = {"zero_optimization": {"stage": 3}}
    dtype = getattr(init, "dtype", torch.float32)
    if dtype == torch.bfloat16:
        config["bf16"] = {"enabled": True}
    elif dtype == torch.float16:
        config["fp16"] = {"enabled": True}
    return config


@contextmanager
def partition_aware_loading() -> Iterator[None]:
    """Tell transformers about an open ``zero.Init`` that nobody registered a ``HfDeepSpeedConfig`` for."""
    init = _active_zero_init()
    with zero3_loading(_config_of(init) if init is not None else None):
        yield


@contextmanager
def paused_partitioning() -> Iterator[None]:
    """Create modules whole inside an open ``zero.Init`` (DeepSpeed's own pause, used around engine creation)."""
    if _active_zero_init() is None:
        yield
        return
    from deepspeed.runtime.zero.partition_parameters import restore_init_context, shutdown_init_context

    shutdown_init_context()
    try:
        yield
    finally:
        restore_init_context()


def num_embeddings(model: nn.Module) -> int:
    """Rows of the input embedding (its full size when ZeRO-3 partitioned: the local tensor is empty)."""
    weight = model.get_input_embeddings().weight
    return int(weight.ds_shape[0]) if is_partitioned(weight) else int(weight.shape[0])


def resize_embeddings(model: nn.Module, size: int) -> None:
    """``resize_token_embeddings`` on a ZeRO-3 model: the new embedding is built whole, then partitioned where the
    open ``zero.Init`` puts partitions: a frozen model's offloading one (``frozen_models``) keeps it on the CPU, not
    the training config's device that transformers has registered."""
    partitioned = any(is_partitioned(p) for p in model.parameters())
    open_init = _active_zero_init()
    with paused_partitioning():
        model.resize_token_embeddings(size)
    whole = [p for p in model.parameters() if not is_partitioned(p)]
    if partitioned and whole:
        import deepspeed
        from transformers.integrations.deepspeed import deepspeed_config

        # an offloading Init holds its remote device as text ("cpu", "nvme"); the training one a torch.device
        offload = getattr(open_init, "remote_device", None)
        deepspeed.zero.Init(module=model, config_dict_or_path=deepspeed_config(),
                            remote_device=offload if isinstance(offload, str) else None)
