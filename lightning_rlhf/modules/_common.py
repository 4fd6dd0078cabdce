"""What every LightningModule here shares: AdamW with decay groups, and warmup + cosine/linear schedules.

Why one place: SFT, reward and both PPO engines (actor, critic) build their optimizers the same way
(DeepSpeed-Chat's recipe: no weight decay on biases and norms, an optional separate learning rate for
LoRA weights, linear warmup then cosine decay), and a copy per module would drift.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator, Literal

import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from lightning_rlhf.models.loading import zero3_loading

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
        scheduler: ``cosine`` (decay to ``min_lr_ratio * learning_rate``), ``linear`` or ``constant``
            after warmup.
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
        # a ZeRO-3 partitioned parameter is an empty 1-d placeholder: its real shape is ds_shape (else every
        # weight fell in the no-decay group whenever the parameters were not gathered, and the group count, which a
        # resumed optimizer must match, depended on it)
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
    """``{"fused": True}`` when PyTorch has a fused AdamW kernel for every parameter, else ``{"foreach": True}``.

    Why: PyTorch's default on CPU is the single-tensor implementation, a Python loop over tensors. For the
    467K-parameter OPT of the DeepSpeed-Chat benchmark configuration, one CPU thread, the fused kernel (CPU
    and CUDA, floating-point parameters) took 0.5-0.7 ms per step against 2.3-3.1 ms for ``foreach`` and
    2.9-4.3 ms for the loop (``python benchmarks/ppo_step_parts.py``).

    Args:
        groups: the optimizer's parameter groups.
        allow_fused: False where the fused kernel must not be used (see :func:`fused_adamw_allowed`).
    """
    params = [p for group in groups for p in group["params"]]
    fused = allow_fused and bool(params) and all(p.device.type in ("cpu", "cuda") and p.is_floating_point()
                                                 for p in params)
    return {"fused": True} if fused else {"foreach": True}


def fused_adamw_allowed(trainer: Any) -> bool:
    """False under Lightning's ``*-mixed`` precision plugins, which refuse to clip the gradients of an optimizer
    that unscales them itself (a fused AdamW); DeepSpeed's and the ``*-true`` plugins take it."""
    from lightning.pytorch.plugins.precision import MixedPrecision

    return not isinstance(getattr(trainer, "precision_plugin", None), MixedPrecision)


def build_optimizer(
    model: nn.Module, args: OptimizerArgs, total_steps: int, allow_fused: bool = True
) -> tuple[torch.optim.Optimizer, LambdaLR]:
    """AdamW over ``model``'s trainable parameters and its warmup + decay scheduler (stepped per optimizer step).

    Args:
        model: the module whose trainable parameters are optimized.
        args: optimizer and schedule settings.
        total_steps: optimizer steps in the whole run (``trainer.estimated_stepping_batches``).
        allow_fused: whether PyTorch's fused AdamW kernel may be used (:func:`fused_adamw_allowed`).
    """
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
    """``configure_optimizers`` return value for one optimizer with a per-step scheduler.

    Args:
        model: the module whose trainable parameters are optimized.
        args: optimizer and schedule settings.
        total_steps: optimizer steps in the whole run.
        trainer: the trainer, whose precision plugin decides whether the fused AdamW kernel may be used.
    """
    allow_fused = fused_adamw_allowed(trainer) if trainer is not None else True
    optimizer, scheduler = build_optimizer(model, args, total_steps, allow_fused)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1}}


def rng_states() -> dict[str, Any]:
    """This process's torch RNG states (CPU, and every CUDA device's when there is one), for a checkpoint.

    Tensors only, so a checkpoint loaded with ``torch.load(weights_only=True)`` keeps them.
    """
    states: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    """Set what :func:`rng_states` returned (CUDA states only when this process sees as many devices)."""
    torch.set_rng_state(states["torch"])
    cuda = states.get("cuda")
    if cuda is not None and torch.cuda.is_available() and torch.cuda.device_count() == len(cuda):
        torch.cuda.set_rng_state_all(cuda)


def attached_strategy(module: Any) -> Any:
    """The strategy of the Trainer ``module`` is attached to; None for a module used without a Trainer."""
    trainer = getattr(module, "_trainer", None)
    return trainer.strategy if trainer is not None else None


def sharded_loading(module: Any) -> Any:
    """Where ``module``'s models are built: under a ZeRO-3 strategy its ``zero3_loading`` (each model built inside
    is partitioned as it is created, so a rank never holds a whole copy), else a no-op."""
    strategy = attached_strategy(module)
    return zero3_loading(getattr(strategy, "config", None) if getattr(strategy, "zero_stage_3", False) else None)


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode for the block (no dropout in reference passes), the previous mode restored after."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)
