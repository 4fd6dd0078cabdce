"""The generation switch: ZeRO-3 training weights -> a hook-free (tensor-parallel) replica -> ``generate``.

``with generation_mode(model, inference_tp_size=2) as policy: policy.generate(ids, mask, ...)``

On entry the model's current weights are gathered (ZeRO-3: ``tp_gather_partition_size`` layers at
a time), LoRA deltas added, and copied into a cached plain replica of the model, split over the
tensor-parallel group when ``inference_tp_size > 1``. Inside, ``generate`` and plain forward calls
run on that replica with a KV cache and no ZeRO hooks; with tensor parallelism the prompts of the
group's ranks are gathered (left-padded to a common length), generated together, and each rank
gets back its own rows. On exit the replica is kept for the next call unless ``release_inference_cache``; each entry
refreshes the layer groups whose weights changed since the previous one (none between validation
batches), so generation always sees the latest optimizer step.

Every rank must enter ``generation_mode`` together (the ZeRO-3 gather is a collective), and the ranks
of one tensor-parallel group must make the same calls with the same keyword arguments inside it.
"""

from __future__ import annotations

import copy
import gc
import sys
import time
import weakref
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

import torch
import torch.distributed as dist
from torch import nn

from lightning_rlhf.strategies.tensor_parallel import InferenceReplica, is_zero3_param, unwrap_model

BACKENDS = ("native", "deepspeed")


@dataclass
class GenerationStats:
    """Time and throughput of generation, accumulated over calls (read by a throughput callback).

    Attributes:
        gather_s: seconds spent switching to inference (gathering shards, merging LoRA, copying into the replica).
        generate_s: seconds spent inside ``generate`` (including the prompt exchange of a TP group).
        new_tokens: response tokens produced for this rank's prompts (padding after EOS not counted).
        tokens_per_s: ``new_tokens / (gather_s + generate_s)``: throughput including the switch.
        calls: number of ``generate`` calls.
        groups_refreshed: gather groups copied into the replica because their weights changed.
        groups_skipped: gather groups left as they were (unchanged since the previous switch).
        bytes_gathered: bytes of ZeRO-3 partitioned weights all-gathered for the refreshes.
        groups_adapters_only: of ``groups_refreshed``, those refreshed from their LoRA adapters alone (the frozen
            base weights not gathered again).
    """

    gather_s: float = 0.0
    generate_s: float = 0.0
    new_tokens: int = 0
    tokens_per_s: float = 0.0
    calls: int = 0
    groups_refreshed: int = 0
    groups_skipped: int = 0
    bytes_gathered: int = 0
    groups_adapters_only: int = 0

    def add(self, gather_s: float = 0.0, generate_s: float = 0.0, new_tokens: int = 0, calls: int = 0) -> None:
        """Accumulate one measurement and update ``tokens_per_s``."""
        self.gather_s += gather_s
        self.generate_s += generate_s
        self.new_tokens += new_tokens
        self.calls += calls
        total = self.gather_s + self.generate_s
        self.tokens_per_s = self.new_tokens / total if total > 0 else 0.0

    def add_refresh(self, count: Any) -> None:
        """Accumulate one replica refresh (a ``tensor_parallel.RefreshCount``)."""
        self.groups_refreshed += count.groups_refreshed
        self.groups_skipped += count.groups - count.groups_refreshed
        self.bytes_gathered += count.bytes_gathered
        self.groups_adapters_only += count.groups_adapters_only

    def reset(self) -> None:
        """Zero every counter (e.g. at the start of a logging interval)."""
        self.gather_s = self.generate_s = self.tokens_per_s = 0.0
        self.new_tokens = self.calls = self.groups_refreshed = self.groups_skipped = self.bytes_gathered = 0
        self.groups_adapters_only = 0


def _clock(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


@contextmanager
def unpatched_linear() -> Iterator[None]:
    """Run with PyTorch's own ``F.linear`` while DeepSpeed ZeRO-3 has replaced it process-wide.

    ZeRO-3 swaps ``torch.nn.functional.linear`` for a memory-saving autograd function (it helps the
    training backward) and leaves it so; on the small per-token matmuls of generation it costs about
    3x per call on CPU, and a replica that is never trained needs none of it.
    """
    zero = sys.modules.get("deepspeed.runtime.zero.partition_parameters")
    original = getattr(getattr(zero, "InsertPostInitMethodToModuleSubClasses", None), "linear_bk", None)
    patched = torch.nn.functional.linear
    if original is None or patched is original:
        yield
        return
    torch.nn.functional.linear = original
    try:
        yield
    finally:
        torch.nn.functional.linear = patched


class GenerationReplica:
    """What ``generation_mode`` yields: ``generate`` and forward calls on the inference replica.

    Args:
        module: the replica (a transformers model, possibly with tensor-parallel layers).
        stats: where generation time and tokens are added.
        tp_group: the tensor-parallel process group (None when ``inference_tp_size == 1``).
    """

    def __init__(self, module: nn.Module, stats: GenerationStats, tp_group=None) -> None:
        self.module = module
        self.stats = stats
        self.tp_group = tp_group
        self.config = module.config
        self.generation_config = module.generation_config

    @property
    def device(self) -> torch.device:
        """Device of the replica's inputs."""
        return self.module.get_input_embeddings().weight.device

    def _pad_id(self, kwargs: dict) -> int:
        gen = self.generation_config
        for value in (kwargs.get("pad_token_id"), gen.pad_token_id, self.config.pad_token_id, gen.eos_token_id):
            if isinstance(value, (list, tuple)):
                value = value[0] if value else None
            if value is not None:
                return int(value)
        return 0

    @torch.no_grad()
    def generate(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs: Any
    ) -> torch.Tensor:
        """KV-cache generation for this rank's left-padded prompts.

        Args:
            input_ids: ``(batch, prompt_len)`` left-padded prompt ids.
            attention_mask: ``(batch, prompt_len)``; 1 for real tokens (all ones if None).
            **kwargs: transformers ``generate`` arguments (``max_new_tokens``, ``do_sample``, ``temperature``,
                ``top_p``, ``eos_token_id``, ...); identical on every rank of a tensor-parallel group.

        Returns:
            ``(batch, prompt_len + new)`` prompt and response ids, padded with the pad token after EOS (or
            transformers' output object with ``return_dict_in_generate=True``, without tensor parallelism).
        """
        if self.tp_group is not None and kwargs.get("return_dict_in_generate"):
            raise ValueError("generation_mode with inference_tp_size > 1 returns sequences only; "
                             "drop return_dict_in_generate")
        pad_id = self._pad_id(kwargs)
        input_ids = input_ids.to(self.device)
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask.to(self.device)
        start = _clock(self.device)
        with unpatched_linear():
            if self.tp_group is None:
                out = self.module.generate(input_ids=input_ids, attention_mask=mask, **kwargs)
            else:
                out = self._generate_in_group(input_ids, mask, pad_id, kwargs)
        response = getattr(out, "sequences", out)[:, input_ids.shape[1]:]  # out: ids, or a ModelOutput
        self.stats.add(generate_s=_clock(self.device) - start, new_tokens=int((response != pad_id).sum()), calls=1)
        return out

    def _generate_in_group(
        self, input_ids: torch.Tensor, mask: torch.Tensor, pad_id: int, kwargs: dict
    ) -> torch.Tensor:
        ids, masks, rows = _gather_rows(self.tp_group, [input_ids, mask], [pad_id, 0], pad_left=True)
        # every rank of the group must draw the same samples, or their KV caches and stopping diverge
        seed = torch.randint(0, 2**62, (1,), device=self.device)
        dist.broadcast(seed, src=dist.get_global_rank(self.tp_group, 0), group=self.tp_group)
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(int(seed))
            out = self.module.generate(input_ids=ids, attention_mask=masks, **kwargs)
        return out[rows, ids.shape[1] - input_ids.shape[1]:]

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs: Any):
        """Plain forward pass (e.g. log-probabilities of generated sequences) on the replica.

        With tensor parallelism the group's batches are right-padded to a common length, run together,
        and each rank gets its own rows and columns of every batch-shaped output back.
        """
        input_ids = input_ids.to(self.device)
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask.to(self.device)
        if self.tp_group is None:
            with unpatched_linear():
                return self.module(input_ids=input_ids, attention_mask=mask, **kwargs)
        tensor_args = sorted(k for k, v in kwargs.items() if isinstance(v, torch.Tensor))
        if tensor_args:
            raise TypeError("with inference_tp_size > 1 the replica's forward takes tensors only as input_ids "
                            f"and attention_mask; got tensor arguments {tensor_args}")
        kwargs.setdefault("use_cache", False)
        ids, masks, rows = _gather_rows(self.tp_group, [input_ids, mask], [self._pad_id({}), 0], pad_left=False)
        with unpatched_linear():
            out = self.module(input_ids=ids, attention_mask=masks, **kwargs)
        width = input_ids.shape[1]
        for key, value in out.items():
            if isinstance(value, torch.Tensor) and value.shape[:1] == ids.shape[:1]:
                value = value[rows]
                out[key] = value[:, :width] if value.dim() > 1 and value.shape[1] == ids.shape[1] else value
        return out


def _gather_rows(group, tensors: list[torch.Tensor], pad_values: list[int], pad_left: bool):
    """All-gather ``(batch_r, len_r)`` tensors of every rank in ``group`` into one padded batch.

    Returns the gathered tensors ``(sum batch, max len)`` and the slice of this rank's rows in them.
    """
    size = torch.tensor(tensors[0].shape[:2], device=tensors[0].device)
    sizes = [torch.zeros_like(size) for _ in range(dist.get_world_size(group))]
    dist.all_gather(sizes, size, group=group)
    sizes = [tuple(int(v) for v in s) for s in sizes]
    max_rows, max_len = max(s[0] for s in sizes), max(s[1] for s in sizes)
    gathered = []
    for tensor, pad in zip(tensors, pad_values):
        rows, length = tensor.shape
        padded = tensor.new_full((max_rows, max_len), pad)
        cols = slice(max_len - length, max_len) if pad_left else slice(0, length)
        padded[:rows, cols] = tensor
        parts = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(parts, padded, group=group)
        gathered.append(torch.cat([part[:n] for part, (n, _) in zip(parts, sizes)]))
    me = dist.get_rank(group)
    offset = sum(n for n, _ in sizes[:me])
    return gathered[0], gathered[1], slice(offset, offset + sizes[me][0])


# -- the context manager ------------------------------------------------------------------------------
@dataclass
class _CacheEntry:
    key: tuple
    replica: InferenceReplica


_CACHE: "weakref.WeakKeyDictionary[nn.Module, _CacheEntry]" = weakref.WeakKeyDictionary()
_MESHES: dict[tuple, Any] = {}


def _model_device(model: nn.Module) -> torch.device:
    param = next(model.parameters())
    if is_zero3_param(param):
        from deepspeed.accelerator import get_accelerator

        return torch.device(get_accelerator().current_device_name())
    return param.device


def tp_mesh(tp_size: int, device_type: str, tp_group=None):
    """The 1-D device mesh of this rank's tensor-parallel group (consecutive ranks of ``tp_size``), cached."""
    from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

    if tp_group is not None:
        return DeviceMesh.from_group(tp_group, device_type)
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError(f"inference_tp_size={tp_size} needs torch.distributed to be initialised")
    world = dist.get_world_size()
    if world % tp_size:
        raise ValueError(f"inference_tp_size={tp_size} must divide the world size {world}")
    key = (tp_size, device_type, world)
    if key not in _MESHES:
        _MESHES[key] = init_device_mesh(device_type, (world // tp_size, tp_size), mesh_dim_names=("dp", "tp"))["tp"]
    return _MESHES[key]


def _check_args(inference_tp_size: int, tp_gather_partition_size: int, backend: str) -> None:
    if inference_tp_size < 1:
        raise ValueError(f"inference_tp_size must be >= 1, got {inference_tp_size}")
    if tp_gather_partition_size < 1:
        raise ValueError(f"tp_gather_partition_size must be >= 1, got {tp_gather_partition_size}")
    if backend not in BACKENDS:
        raise ValueError(f"generation backend must be one of {BACKENDS}, got {backend!r}")


@contextmanager
def generation_mode(
    model: nn.Module,
    *,
    inference_tp_size: int = 1,
    tp_gather_partition_size: int = 8,
    release_inference_cache: bool = False,
    backend: str = "native",
    tp_plan: dict[str, str] | None = None,
    stats: GenerationStats | None = None,
    tp_group=None,
) -> Iterator[GenerationReplica]:
    """Switch ``model`` to fast generation: a hook-free, optionally tensor-parallel replica of its latest weights.

    Args:
        model: the trained causal LM: a transformers model, possibly peft-wrapped (LoRA), possibly ZeRO-3
            partitioned, or the DeepSpeed engine around it. It is only read, never modified.
        inference_tp_size: ranks per tensor-parallel group (consecutive ranks); 1 keeps a full replica per rank.
        tp_gather_partition_size: decoder layers gathered at once from ZeRO-3 shards (bounds peak memory).
        release_inference_cache: free the replica on exit instead of keeping it for the next call.
        backend: ``native`` (PyTorch tensor parallel + transformers ``generate``; CPU and CUDA) or
            ``deepspeed`` (DeepSpeed's fused inference kernels; CUDA only).
        tp_plan: ``module pattern -> 'colwise'|'rowwise'`` for a family without a built-in plan.
        stats: accumulates gather/generate time and tokens; a fresh one if None.
        tp_group: an existing process group to use as the tensor-parallel group (its size must equal
            ``inference_tp_size``); None forms groups of consecutive ranks.

    Yields:
        A :class:`GenerationReplica`: ``.generate(input_ids, attention_mask, **generate_kwargs)`` and ``__call__``.
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
    key = (inference_tp_size, tp_gather_partition_size, str(device), repr(tp_plan), id(mesh))
    entry = _CACHE.get(model)
    if entry is None or entry.key != key:
        _CACHE.pop(model, None)
        replica = InferenceReplica(model, device, mesh, tp_plan, tp_gather_partition_size,
                                   keep_lora_base=not release_inference_cache)  # base shards only if refreshed again
        entry = _CacheEntry(key, replica)
        _CACHE[model] = entry
    stats.add_refresh(entry.replica.refresh())
    entry.replica.module.generation_config = copy.deepcopy(unwrap_model(model).generation_config)
    stats.add(gather_s=_clock(device) - start)
    group = mesh.get_group() if mesh is not None else None
    try:
        yield GenerationReplica(entry.replica.module, stats, group)
    finally:
        if release_inference_cache:
            release_replica(model)


def release_replica(model: nn.Module) -> None:
    """Free the cached inference replica of ``model`` (if any) and its device memory."""
    if _CACHE.pop(model, None) is not None:
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


__all__ = ["GenerationReplica", "GenerationStats", "generation_mode", "release_replica", "unwrap_model"]
