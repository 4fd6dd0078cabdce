"""AdamW with decay groups and warmup + decay schedules: DeepSpeed-Chat's recipe, shared by every module here."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

_NO_DECAY_MARKERS = ("bias", "norm", "ln_", "layernorm", "ln_f")


@dataclass
class OptimizerArgs:
    """AdamW and learning-rate schedule settings.

    Attributes:
        learning_rate: peak learning rate (reached after warmup).
        weight_decay: AdamW weight decay on weight matrices (biases and norms never decay).
        betas: AdamW ``(beta1, beta2)``.
        eps: AdamW epsilon.
        lora_learning_rate: learning rate for LoRA weights; None uses ``learning_rate``.
        scheduler: after warmup, ``cosine`` (to ``min_lr_ratio * learning_rate``), ``linear`` or ``constant``.
        warmup_steps: optimizer steps of linear warmup from 0.
        warmup_ratio: warmup as a fraction of the total optimizer steps (used when ``warmup_steps`` is 0).
        min_lr_ratio: final learning rate as a fraction of the peak.
    """

    learning_rate: float = 1e-5
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    lora_learning_rate: float | None = None
    scheduler: Literal["cosine", "linear", "constant"] = "cosine"
    warmup_steps: int = 0
    warmup_ratio: float = 0.0
    min_lr_ratio: float = 0.0

    def __post_init__(self) -> None:
        if self.learning_rate <= 0:
            raise ValueError(f"OptimizerArgs.learning_rate must be positive, got {self.learning_rate}")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ValueError(f"OptimizerArgs.warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.warmup_steps < 0:
            raise ValueError(f"OptimizerArgs.warmup_steps must be >= 0, got {self.warmup_steps}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"OptimizerArgs.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.scheduler not in ("cosine", "linear", "constant"):
            raise ValueError(f"OptimizerArgs.scheduler must be cosine, linear or constant, got {self.scheduler!r}")

    def warmup_for(self, total_steps: int) -> int:
        """Warmup steps for a run of ``total_steps`` optimizer steps."""
        return self.warmup_steps or int(self.warmup_ratio * total_steps)


def parameter_groups(model: nn.Module, args: OptimizerArgs) -> list[dict[str, Any]]:
    """Trainable parameters of ``model`` split into AdamW groups: decay / no decay, LoRA / the rest."""
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        lowered = name.lower()
        # a ZeRO-3 partitioned parameter is an empty 1-d placeholder: without ds_shape its group (and the group
        # count a resumed optimizer must match) would depend on whether it is gathered
        dims = len(getattr(param, "ds_shape", param.shape))
        no_decay = dims < 2 or any(marker in lowered for marker in _NO_DECAY_MARKERS)
        is_lora = "lora_" in lowered
        groups.setdefault((no_decay, is_lora), []).append(param)
    if not groups:
        raise ValueError(f"{type(model).__name__} has no trainable parameters to optimize")
    lora_lr = args.lora_learning_rate or args.learning_rate
    return [
        {"params": params, "weight_decay": 0.0 if no_decay else args.weight_decay,
         "lr": lora_lr if is_lora else args.learning_rate}
        for (no_decay, is_lora), params in sorted(groups.items())
    ]


def lr_lambda(step: int, total_steps: int, warmup_steps: int, scheduler: str, min_lr_ratio: float) -> float:
    """Learning-rate multiplier at optimizer ``step``: linear warmup, then cosine/linear/constant."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if scheduler == "constant":
        return 1.0
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    if scheduler == "linear":
        shape = 1.0 - progress
    else:
        shape = 0.5 * (1.0 + math.cos(math.pi * progress))
    return min_lr_ratio + (1.0 - min_lr_ratio) * shape


def fastest_adamw_kind(groups: list[dict[str, Any]], allow_fused: bool = True) -> dict[str, bool]:
    """``{"fused": True}`` if every parameter has a fused AdamW kernel, else ``{"foreach": True}`` (not the loop)."""
    params = [p for group in groups for p in group["params"]]
    fused = allow_fused and bool(params) and all(p.device.type in ("cpu", "cuda") and p.is_floating_point()
                                                 for p in params)
    return {"fused": True} if fused else {"foreach": True}


def fused_adamw_allowed(trainer: Any) -> bool:
    """False under Lightning's ``*-mixed`` plugins: they refuse to clip an optimizer that unscales itself (fused)."""
    from lightning.pytorch.plugins.precision import MixedPrecision

    return not isinstance(getattr(trainer, "precision_plugin", None), MixedPrecision)


def build_optimizer(
    model: nn.Module, args: OptimizerArgs, total_steps: int, allow_fused: bool = True
) -> tuple[torch.optim.Optimizer, LambdaLR]:
    """AdamW over ``model``'s trainable parameters and its scheduler over ``total_steps`` optimizer steps."""
    if total_steps <= 0 or total_steps == float("inf"):
        rank_zero_warn(f"total optimizer steps is {total_steps}; the schedule decays over 1 step after warmup")
        total_steps = 1
    groups = parameter_groups(model, args)
    optimizer = torch.optim.AdamW(groups, betas=args.betas, eps=args.eps, **fastest_adamw_kind(groups, allow_fused))
    warmup = args.warmup_for(int(total_steps))
    scheduler = LambdaLR(
        optimizer,
        lambda step: lr_lambda(step, int(total_steps), warmup, args.scheduler, args.min_lr_ratio),
    )
    return optimizer, scheduler


def lightning_optimizer_config(
    model: nn.Module, args: OptimizerArgs, total_steps: int, trainer: Any = None
) -> dict[str, Any]:
    """``configure_optimizers`` return value: one optimizer, a per-step scheduler (fused if ``trainer`` allows)."""
    allow_fused = fused_adamw_allowed(trainer) if trainer is not None else True
    optimizer, scheduler = build_optimizer(model, args, total_steps, allow_fused)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1}}
