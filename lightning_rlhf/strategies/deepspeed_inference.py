"""``backend="deepspeed"`` of the generation switch: DeepSpeed's fused CUDA inference kernels.

Injection copies the weights into fused layouts that cannot be refreshed in place, so each entry builds anew.
"""

from __future__ import annotations

import gc
from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn

from lightning_rlhf.models.loading import unwrap_model
from lightning_rlhf.strategies.generation_replica import GenerationReplica, _clock, tp_mesh
from lightning_rlhf.strategies.tensor_parallel import InferenceReplica

# model_type -> DeepSpeed injection container (deepspeed/module_inject/containers)
KERNEL_FAMILIES = ("bloom", "gpt2", "gptj", "gpt_neo", "gpt_neox", "llama", "opt")


def kernels_work_with_installed_transformers() -> bool:
    """False from transformers 5 on, whose attention and cache interfaces DeepSpeed's injection containers predate.

    The backend then refuses to start rather than crash mid-rollout (docs/measurements.md).
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
    check_kernels_work()


def check_kernels_work() -> None:
    """Raise when DeepSpeed's fused inference kernels cannot run with the installed transformers."""
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

    Arguments as :func:`~.generation.generation_mode`'s; ``tp_size`` is DeepSpeed's own weight slicing.
    """
    import deepspeed

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
