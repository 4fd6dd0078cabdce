"""Loading pretrained models while DeepSpeed ZeRO-3 partitions every new parameter (``deepspeed.zero.Init``).

Why a module of its own: inside Lightning's ``configure_model`` under ZeRO-3 each parameter is partitioned as it
is created, so its local tensor is empty. transformers copes only when it knows (a registered
``HfDeepSpeedConfig``): it then loads through DeepSpeed's gather API. Without it, its weight init indexes the
empty embedding (``weight[padding_idx]``: ``IndexError: index 2 is out of bounds for dimension 0 with size 0``
with SmolLM2), and its embedding resize expects to create a whole (unpartitioned) new embedding, which an active
``zero.Init`` partitions behind its back. The helpers here make both work whoever opened the ``zero.Init``: our
strategy, Lightning's ``DeepSpeedStrategy``, or a user's own block.
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
    """What this rank holds of ``param``: the filled part of its ZeRO-3 partition, else the tensor itself.

    DeepSpeed allocates every rank's partition with ``torch.empty`` at the parameter's size rounded up to a
    multiple of the world size, and fills only the elements the parameter has: the tail of the last ranks'
    partitions is uninitialised memory, which can hold NaN. Averaging it (EMA) or summing it (the replica's
    change fingerprint) would carry that garbage; this view leaves it out.
    """
    if not is_partitioned(param):
        return param.data
    import torch.distributed as dist

    shard = param.ds_tensor
    group = getattr(param, "ds_process_group", None)
    rank = dist.get_rank(group=group) if dist.is_available() and dist.is_initialized() else 0
    size = shard.numel()
    return shard.narrow(0, 0, min(max(param.ds_numel - rank * size, 0), size))


@contextmanager
def zero3_loading(deepspeed_config: dict[str, Any] | None) -> Iterator[None]:
    """Let ``from_pretrained`` build and load models partitioned, for a ZeRO-3 ``deepspeed_config``.

    Registers a ``HfDeepSpeedConfig`` for the block (no-op when the config is not ZeRO-3 or one is registered).
    """
    stage = ((deepspeed_config or {}).get("zero_optimization") or {}).get("stage", 0)
    if stage != 3:
        yield
        return
    from transformers.integrations.deepspeed import (
        HfDeepSpeedConfig,
        is_deepspeed_zero3_enabled,
        unset_hf_deepspeed_config,
    )

    if is_deepspeed_zero3_enabled():  # already registered by an enclosing block (e.g. the strategy's)
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
    """Tell transformers about an open ``zero.Init`` that nobody registered a ``HfDeepSpeedConfig`` for.

    The outer ``zero.Init`` keeps doing the partitioning (a nested one only counts depth), so the minimal config
    registered here changes only which loading path transformers takes.
    """
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
    """``resize_token_embeddings`` that also works on a ZeRO-3 partitioned model.

    transformers resizes a partitioned model by building the new embedding whole and swapping it in, so the
    new embedding (and an untied head) must be created outside ``zero.Init``; they are partitioned afterwards
    (broadcast from rank 0 first, so every rank holds the same mean-initialised new rows).
    """
    partitioned = any(is_partitioned(p) for p in model.parameters())
    with paused_partitioning():
        model.resize_token_embeddings(size)
    whole = [p for p in model.parameters() if not is_partitioned(p)]
    if partitioned and whole:
        import deepspeed
        from transformers.integrations.deepspeed import deepspeed_config

        deepspeed.zero.Init(module=model, config_dict_or_path=deepspeed_config())
