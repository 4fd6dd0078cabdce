"""Checks of the machine a ``HybridDeepSpeedStrategy`` run starts on: accelerator, precision, process layout.

Why apart from the strategy: each check reads the environment (the accelerator, ``/proc/cpuinfo``, the world
size) and answers with an error or a warning that says what to change; none of them places a model, and
keeping them here leaves the strategy its placement logic.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning.pytorch.accelerators import CPUAccelerator, CUDAAccelerator
from lightning.pytorch.utilities.rank_zero import rank_zero_warn


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


def check_tensor_parallel_layout(inference_tp_size: int, world_size: int) -> None:
    """Refuse an ``inference_tp_size`` that does not divide the world size."""
    if world_size % inference_tp_size != 0:
        raise ValueError(
            f"inference_tp_size={inference_tp_size} must divide the world size {world_size} "
            f"(num_nodes x devices); choose one of {divisors(world_size)}."
        )


def check_positive(name: str, value: float) -> None:
    """Refuse a setting that must be positive."""
    if not value > 0:
        raise ValueError(f"{name} must be positive, got {value!r}.")


def divisors(n: int) -> list[int]:
    """The divisors of ``n``, ascending."""
    return [d for d in range(1, n + 1) if n % d == 0]
