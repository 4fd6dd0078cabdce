"""What :func:`~.generation.generation_mode` yields, shared by both backends: the replica, its stats, the TP mesh.

``generate`` and forward calls run on a hook-free replica; with tensor parallelism the group's prompts are gathered,
run together, and each rank gets its own rows back.
"""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any, Iterator

import torch
import torch.distributed as dist
from torch import nn

_MESHES: dict[tuple, Any] = {}
BACKENDS = ("auto", "native", "fast", "deepspeed", "vllm")


def check_backend(backend: str, inference_tp_size: int) -> None:
    """Refuse an unknown backend, or a full-replica backend with a tensor-parallel replica (the strategy checks at
    construction, ``generation_mode`` at every call)."""
    if backend not in BACKENDS:
        names = ", ".join(repr(name) for name in BACKENDS[:-1]) + f" or {BACKENDS[-1]!r}"
        raise ValueError(f"generation backend must be one of {names}, got {backend!r} (the strategy's "
                         f"generation_backend)")
    if backend in ("fast", "vllm") and inference_tp_size > 1:
        raise ValueError(f"generation_backend={backend!r} decodes on a full replica per rank, so inference_tp_size "
                         f"must be 1 (got {inference_tp_size}); use generation_backend='native' for a "
                         f"tensor-parallel replica")


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
        groups_adapters_only: of ``groups_refreshed``, those refreshed from their LoRA adapters alone.
        sync_s: seconds spent loading the replica's weights into a vLLM engine (``generation_backend="vllm"``).
        syncs: number of those loads.
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
    sync_s: float = 0.0
    syncs: int = 0

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

    def add_sync(self, seconds: float) -> None:
        """Accumulate one weight load into a generation engine."""
        self.sync_s += seconds
        self.syncs += 1

    def reset(self) -> None:
        """Zero every counter (e.g. at the start of a logging interval)."""
        self.gather_s = self.generate_s = self.tokens_per_s = self.sync_s = 0.0
        self.syncs = 0
        self.new_tokens = self.calls = self.groups_refreshed = self.groups_skipped = self.bytes_gathered = 0
        self.groups_adapters_only = 0


def _clock(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


@contextmanager
def unpatched_linear() -> Iterator[None]:
    """Run with PyTorch's own ``F.linear`` while DeepSpeed ZeRO-3 has replaced it process-wide.

    ZeRO-3's memory-saving version only helps a training backward and slows generation's small matmuls.
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
    """What ``generation_mode`` yields: ``generate`` and forward calls on the inference ``module`` replica.

    With a ``decoder`` (``generation_backend="fast"`` or ``"vllm"``), ``generate`` calls it wherever it implements
    the arguments (its ``supports``) and transformers' ``generate`` otherwise.
    """

    def __init__(self, module: nn.Module, stats: GenerationStats, tp_group=None, decoder: Any = None) -> None:
        self.module = module
        self.decoder = decoder
        self.stats = stats
        self.tp_group = tp_group
        self.config = module.config
        self.generation_config = module.generation_config

    @property
    def engine(self) -> bool:
        """Whether generation runs on an engine of its own (vLLM): it takes no logits processor (the rollout's
        log-probs come from a forward pass) and caches shared prompts itself."""
        return self.decoder is not None and hasattr(self.decoder, "last_logprobs")

    def sampler_logprobs(self) -> torch.Tensor | None:
        """``(B, R)`` log-probs the engine gave the tokens of the last ``generate`` (None without an engine)."""
        return self.decoder.last_logprobs if self.engine else None

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
        """KV-cache generation for this rank's left-padded prompts; returns prompt + response ids.

        ``kwargs`` go to transformers' ``generate`` and must be identical on every rank of a tensor-parallel group.
        """
        if self.tp_group is not None and kwargs.get("return_dict_in_generate"):
            raise ValueError("generation_mode with inference_tp_size > 1 returns sequences only; "
                             "drop return_dict_in_generate")
        pad_id = self._pad_id(kwargs)
        input_ids = input_ids.to(self.device)
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask.to(self.device)
        start = _clock(self.device)
        with unpatched_linear():
            if self.tp_group is None and self.decoder is not None and self.decoder.supports(kwargs):
                out = self.decoder.generate(input_ids, mask, **kwargs)
            elif self.tp_group is None:
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
        """Plain forward pass on the replica (with tensor parallelism, the group's batches run together)."""
        input_ids = input_ids.to(self.device)
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask.to(self.device)
        if self.tp_group is None:
            packed = getattr(self.decoder, "packed_linears", None)  # the fast backend's packed weights, no gradient
            with unpatched_linear(), packed() if packed and not torch.is_grad_enabled() else nullcontext():
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
    """All-gather every rank's ``(batch_r, len_r)`` tensors into one padded batch, with this rank's row slice."""
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
