"""``backend="deepspeed"`` of the generation switch: DeepSpeed's fused CUDA inference kernels.

Why separate: the kernels exist only on CUDA, are compiled on first use, and cover a fixed list of
families (DeepSpeed's injection containers). Kernel injection copies the weights into fused
layouts, so a kernel-injected model cannot be refreshed in place: each entry builds it anew from a
freshly gathered hook-free replica and frees it on exit.
"""

from __future__ import annotations

import gc
from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn

from lightning_rlhf.strategies.tensor_parallel import InferenceReplica, unwrap_model

# model_type -> DeepSpeed injection container (deepspeed/module_inject/containers)
KERNEL_FAMILIES = ("bloom", "gpt2", "gptj", "gpt_neo", "gpt_neox", "llama", "opt")


def kernels_work_with_installed_transformers() -> bool:
    """DeepSpeed's kernel-injection containers predate transformers 5's attention and cache interfaces.

    Measured on an H100 (DeepSpeed 0.19.8, transformers 5.17, 2026-11-22, ``benchmarks/gpu_smoke.sh``): a
    kernel-injected Llama aborted the process inside ``softmax_context``; OPT failed with ``'tuple' object has
    no attribute 'size'``. So the backend refuses to start rather than crash mid-rollout.
    """
    import transformers

    return int(transformers.__version__.split(".")[0]) < 5


def check_kernel_support(model: nn.Module, device: torch.device) -> None:
    """Raise a clear error when DeepSpeed's fused kernels cannot serve ``model`` on ``device``."""
    if device.type != "cuda":
        raise RuntimeError(
            f"generation backend 'deepspeed' uses DeepSpeed's fused CUDA inference kernels, but the model is on "
            f"{device}; use generation_backend='native' (PyTorch tensor parallel, works on CPU and CUDA)"
        )
    family = unwrap_model(model).config.model_type
    if family not in KERNEL_FAMILIES:
        raise ValueError(
            f"DeepSpeed's fused inference kernels do not support model family {family!r} (supported: "
            f"{KERNEL_FAMILIES}); use generation_backend='native'"
        )
    if not kernels_work_with_installed_transformers():
        import transformers

        raise RuntimeError(
            f"generation backend 'deepspeed' (DeepSpeed's fused inference kernels) does not work with transformers "
            f"{transformers.__version__}: its kernel-injection containers predate transformers 5 (on an H100, Llama "
            "aborted inside softmax_context and OPT failed on the new cache objects). Use "
            "generation_backend='native', or transformers<5 for the kernels."
        )


@contextmanager
def deepspeed_generation_mode(
    model: nn.Module, device: torch.device, tp_size: int, gather_partition_size: int, stats, tp_group=None
) -> Iterator:
    """Yield a :class:`GenerationReplica` over a kernel-injected copy of ``model``'s current weights.

    Args:
        model: the trained model (see :func:`generation_mode`).
        device: the CUDA device to run on.
        tp_size: DeepSpeed tensor-parallel size (its own weight slicing over ``tp_group``).
        gather_partition_size: layers gathered at once from ZeRO-3 shards.
        stats: a ``GenerationStats`` to add the switch time to.
        tp_group: process group of the tensor-parallel ranks (None forms consecutive groups).
    """
    import deepspeed

    from lightning_rlhf.strategies.generation import GenerationReplica, _clock, tp_mesh

    check_kernel_support(model, device)
    start = _clock(device)
    group = tp_mesh(tp_size, device.type, tp_group).get_group() if tp_size > 1 else None
    replica = InferenceReplica(model, device, None, None, gather_partition_size)
    replica.refresh()
    dtype = next(replica.module.parameters()).dtype
    engine = deepspeed.init_inference(
        replica.module,
        dtype=dtype,
        replace_with_kernel_inject=True,
        tensor_parallel={"tp_size": tp_size, "tp_group": group} if group is not None else {"tp_size": 1},
    )
    stats.add(gather_s=_clock(device) - start)
    try:
        yield GenerationReplica(engine.module, stats, group)
    finally:
        del engine, replica
        gc.collect()
        torch.cuda.empty_cache()
