"""Checks of the machine a ``HybridDeepSpeedStrategy`` run starts on: accelerator, precision, process layout."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional

from lightning.pytorch.accelerators import CPUAccelerator, CUDAAccelerator
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn


def cpu_has_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether this CPU has bf16 arithmetic (x86 ``avx512_bf16``/``amx_bf16``, Arm ``bf16``); True if unknown."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return True
    flags = {flag for line in text.splitlines() if line.startswith(("flags", "Features"))
             for flag in line.split(":", 1)[1].split()}
    return not flags or bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})


def check_accelerator_and_precision(accelerator: Any, precision: str) -> None:
    """Refuse accelerators other than CUDA and CPU and fp16 on CPU; warn about bf16 on a CPU without it."""
    if not isinstance(accelerator, (CUDAAccelerator, CPUAccelerator)):
        raise RuntimeError(
            f"HybridDeepSpeedStrategy runs on CUDA or CPU accelerators, not {type(accelerator).__name__}."
        )
    precision = str(precision)
    if isinstance(accelerator, CPUAccelerator) and precision.startswith("16"):
        raise ValueError(
            f"precision={precision!r} is not supported on CPU: DeepSpeed's fp16 loss scaling needs CUDA. "
            "Use precision='bf16-mixed' or '32-true' on CPU."
        )
    if isinstance(accelerator, CPUAccelerator) and precision.startswith("bf16") and not cpu_has_bf16():
        rank_zero_warn(
            f"precision={precision!r} on a CPU without bf16 instructions (no avx512_bf16 / amx_bf16 / bf16 in "
            "/proc/cpuinfo): its bf16 matrix multiplies are emulated, 10x or more slower than fp32 "
            "(benchmarks/README.md). Use precision='32-true' on this machine."
        )


def check_tensor_parallel_layout(inference_tp_size: int, world_size: int, num_nodes: int = 1) -> None:
    """Refuse an ``inference_tp_size`` whose groups do not tile the ranks, or would span nodes.

    A group all-reduces once per layer per token, so it must not leave a node (it has to divide the local ranks).
    """
    if world_size % inference_tp_size != 0:
        raise ValueError(
            f"inference_tp_size={inference_tp_size} must divide the world size {world_size} "
            f"(num_nodes x devices); choose one of {divisors(world_size)}."
        )
    per_node = _processes_per_node(world_size, num_nodes)
    if per_node % inference_tp_size != 0:
        raise ValueError(
            f"inference_tp_size={inference_tp_size} would put a tensor-parallel group across nodes: each node runs "
            f"{per_node} processes ({world_size} ranks on {world_size // per_node} nodes), and a group all-reduces "
            "every layer for every generated token, which over the network is slower than not splitting. Choose "
            f"one of {divisors(per_node)}, which keeps each group inside a node."
        )


def _processes_per_node(world_size: int, num_nodes: int) -> int:
    local: Optional[str] = os.environ.get("LOCAL_WORLD_SIZE")
    if local and local.isdigit() and int(local) > 0:
        return int(local)
    return max(world_size // max(num_nodes, 1), 1)


def use_cpu_for_deepspeed() -> None:
    """Make DeepSpeed use its CPU accelerator when Lightning's accelerator is the CPU.

    DeepSpeed picks its own (CUDA on a GPU host) and would put ZeRO partitions there whatever Lightning uses.
    """
    os.environ["DS_ACCELERATOR"] = "cpu"
    skip_shared_memory_comm_build()
    from deepspeed.accelerator import get_accelerator, set_accelerator

    picked = get_accelerator().device_name()
    if picked != "cpu":
        from deepspeed.accelerator.cpu_accelerator import CPU_Accelerator

        set_accelerator(CPU_Accelerator())
        rank_zero_info(f"HybridDeepSpeedStrategy: accelerator='cpu', so DeepSpeed's accelerator is CPU (it had picked "
                       f"{picked!r}); ZeRO partitions live in CPU memory.")
    if get_accelerator().device_name() != "cpu":
        raise RuntimeError(
            f"Trainer(accelerator='cpu') but DeepSpeed's accelerator is {get_accelerator().device_name()!r}, so ZeRO "
            "would place partitions there. Start the run with DS_ACCELERATOR=cpu in the environment."
        )


def skip_shared_memory_comm_build() -> None:
    """Keep DeepSpeed from compiling its shared-memory all-reduce op, which CPU runs of this package never call.

    ``init_distributed`` would JIT-compile ``deepspeed_shm_comm``, used only by DeepSpeed's CUDA inference engine;
    DeepSpeed reads its availability from ``deepspeed.ops.__compatible_ops__``, edited here.
    """
    import deepspeed.ops
    from deepspeed.ops.op_builder.cpu import ShareMemCommBuilder

    deepspeed.ops.__compatible_ops__[ShareMemCommBuilder.NAME] = False


def check_positive(name: str, value: float) -> None:
    """Refuse a setting that must be positive."""
    if not value > 0:
        raise ValueError(f"{name} must be positive, got {value!r}.")


def divisors(n: int) -> list[int]:
    """The divisors of ``n``, ascending."""
    return [d for d in range(1, n + 1) if n % d == 0]


def ranks_with(strategy: Any, flag: bool) -> int:
    """How many ranks pass a true ``flag`` (one all-reduce; collective: every rank calls it together)."""
    import torch

    count = torch.tensor(float(flag), device=strategy.root_device)
    if strategy.world_size > 1:
        count = strategy.reduce(count, reduce_op="sum")
    return int(count.item())
