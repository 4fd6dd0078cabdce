"""The generation switch: ZeRO-3 training weights -> a hook-free (tensor-parallel) replica -> ``generate``.

``with generation_mode(model, inference_tp_size=2) as policy: policy.generate(ids, mask, ...)``

How it works: docs/concepts.md. Every rank must enter ``generation_mode`` together (the ZeRO-3 gather is a
collective), and the ranks of one tensor-parallel group must make the same calls inside it.
"""

from __future__ import annotations

import copy
import gc
import weakref
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

import torch
from torch import nn

from lightning_rlhf.models.fast_decode import FastDecoder
from lightning_rlhf.models.loading import unwrap_model
from lightning_rlhf.models.packed_linear import packing_available
from lightning_rlhf.strategies.generation_replica import (
    GenerationReplica,
    GenerationStats,
    _clock,
    check_backend,
    tp_mesh,
)
from lightning_rlhf.strategies.tensor_parallel import InferenceReplica, is_zero3_param


@dataclass
class _CacheEntry:
    key: tuple
    replica: InferenceReplica
    decoder: Any = None  # FastDecoder or VLLMDecoder


_CACHE: "weakref.WeakKeyDictionary[nn.Module, _CacheEntry]" = weakref.WeakKeyDictionary()


def _model_device(model: nn.Module) -> torch.device:
    param = next(model.parameters())
    if is_zero3_param(param):
        from deepspeed.accelerator import get_accelerator

        return torch.device(get_accelerator().current_device_name())
    return param.device


def _check_args(inference_tp_size: int, tp_gather_partition_size: int, backend: str) -> None:
    if inference_tp_size < 1:
        raise ValueError(f"inference_tp_size must be >= 1, got {inference_tp_size}")
    if tp_gather_partition_size < 1:
        raise ValueError(f"tp_gather_partition_size must be >= 1, got {tp_gather_partition_size}")
    check_backend(backend, inference_tp_size)


@contextmanager
def generation_mode(
    model: nn.Module,
    *,
    inference_tp_size: int = 1,
    tp_gather_partition_size: int = 8,
    release_inference_cache: bool | None = False,
    backend: str = "native",
    tp_plan: dict[str, str] | None = None,
    stats: GenerationStats | None = None,
    tp_group=None,
    engine_kwargs: dict[str, Any] | None = None,
) -> Iterator[GenerationReplica]:
    """Switch ``model`` to fast generation: a hook-free, optionally tensor-parallel replica of its latest weights.

    Args:
        model: the trained causal LM (transformers, peft or DeepSpeed engine, maybe ZeRO-3); only read.
        inference_tp_size: ranks per tensor-parallel group (consecutive ranks); 1 keeps a full replica per rank.
        tp_gather_partition_size: decoder layers gathered at once from ZeRO-3 shards (bounds peak memory).
        release_inference_cache: free the replica on exit instead of keeping it for the next call; None keeps it
            on exit for :func:`release_idle_replicas` to free before the next backward unless ``model`` carries
            LoRA adapters (the strategy's default: validation batches between two steps share one replica).
        backend: ``native`` (transformers' ``generate``; PyTorch tensor parallel; CPU and CUDA), ``fast`` (the
            decode loop of :mod:`~lightning_rlhf.models.fast_decode`, ``inference_tp_size=1``), ``auto`` (``fast``
            where its packed weights run: a float32 CPU replica, ``inference_tp_size=1``; else ``native``),
            ``deepspeed`` (fused kernels; CUDA only) or ``vllm`` (a vLLM engine in this process,
            :mod:`~lightning_rlhf.models.vllm_decode`, fed the replica's weights after each refresh;
            ``inference_tp_size=1``).
        tp_plan: ``module pattern -> 'colwise'|'rowwise'`` for a family without a built-in plan.
        stats: accumulates gather/generate time and tokens; a fresh one if None.
        tp_group: an existing tensor-parallel process group of ``inference_tp_size`` ranks; None forms them.
        engine_kwargs: more ``vllm.LLM`` arguments for ``backend="vllm"`` (read when the engine is built).
    """
    _check_args(inference_tp_size, tp_gather_partition_size, backend)
    stats = stats if stats is not None else GenerationStats()
    device = _model_device(model)
    if backend == "deepspeed":
        from lightning_rlhf.strategies.deepspeed_inference import deepspeed_generation_mode

        with deepspeed_generation_mode(model, device, inference_tp_size, tp_gather_partition_size, stats,
                                       tp_group) as replica:
            yield replica
        return
    start = _clock(device)
    mesh = tp_mesh(inference_tp_size, device.type, tp_group) if inference_tp_size > 1 else None
    if mesh is not None and mesh.size() != inference_tp_size:
        raise ValueError(f"tp_group has {mesh.size()} ranks but inference_tp_size={inference_tp_size}")
    key = (inference_tp_size, tp_gather_partition_size, str(device), repr(tp_plan), id(mesh), backend)
    entry = _CACHE.get(model)
    if entry is None or entry.key != key:
        _CACHE.pop(model, None)
        replica = InferenceReplica(model, device, mesh, tp_plan, tp_gather_partition_size,
                                   keep_lora_base=not release_inference_cache)
        entry = _CacheEntry(key, replica)
        _CACHE[model] = entry
    refreshed = entry.replica.refresh()
    stats.add_refresh(refreshed)
    fast = backend == "fast" or (backend == "auto" and mesh is None and packing_available(entry.replica.module))
    if fast and entry.decoder is None:  # the refresh writes in place: packed layers follow by version
        entry.decoder = FastDecoder(entry.replica.module)
    if backend == "vllm":
        if entry.decoder is None:
            from lightning_rlhf.models.vllm_decode import VLLMDecoder

            entry.decoder = VLLMDecoder(entry.replica.module, engine_kwargs=engine_kwargs)
        if entry.decoder.sync():
            stats.add_sync(entry.decoder.last_sync_s)
    entry.replica.module.generation_config = copy.deepcopy(unwrap_model(model).generation_config)
    stats.add(gather_s=_clock(device) - start)
    group = mesh.get_group() if mesh is not None else None
    try:
        yield GenerationReplica(entry.replica.module, stats, group, entry.decoder)
    finally:
        if release_inference_cache:
            release_replica(model)


def keeps_replica_by_default(model: nn.Module) -> bool:
    """Whether ``release_inference_cache=None`` keeps ``model``'s replica through training: only with LoRA adapters.

    Fully fine-tuned, every weight changes at every optimizer step, so the next rollout gathers and copies all of
    them again whether the replica was kept or not, and keeping it only holds ``2 Psi / tp`` bytes through backward
    and the optimizer step. With LoRA a kept replica (and, under ZeRO-3, its shards of the adapted frozen weights)
    lets the refresh gather only the adapters. Measured in ``docs/recipes/memory.md``.
    """
    return any(hasattr(module, "lora_A") for module in unwrap_model(model).modules())


def release_idle_replicas() -> int:
    """Free the cached replicas that :func:`keeps_replica_by_default` would not keep (called before a backward
    under ``release_inference_cache=None``); the number freed."""
    idle = [model for model in list(_CACHE.keys()) if not keeps_replica_by_default(model)]
    for model in idle:
        release_replica(model)
    return len(idle)


def release_replica(model: nn.Module) -> None:
    """Free the cached inference replica of ``model`` (if any) and its device memory."""
    if _CACHE.pop(model, None) is not None:
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


__all__ = ["GenerationReplica", "GenerationStats", "generation_mode", "keeps_replica_by_default",
           "release_idle_replicas", "release_replica", "unwrap_model"]
