"""How each DeepSpeed engine's optimizer steps: gradient clipping, micro-steps and accumulation, offload.

Translations from a LightningModule's way of saying these (``max_grad_norm``, ``opt.step(); opt.zero_grad()``)
to the config and calls DeepSpeed expects.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, Optional

import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from torch import nn
from torch.optim import Optimizer
from torch.utils.hooks import RemovableHandle


def module_gradient_clipping(module: Any) -> Optional[float]:
    """The module's gradient-norm clip: ``Trainer(gradient_clip_val)``, or ``max_grad_norm`` under manual optimization.

    DeepSpeed clips inside ``engine.step`` from its config, so Lightning's ``clip_gradients`` does nothing.
    """
    if module.automatic_optimization:
        trainer = getattr(module, "_trainer", None)
        return getattr(trainer, "gradient_clip_val", None) or None
    value = getattr(module, "max_grad_norm", None)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ValueError(f"{type(module).__name__}.max_grad_norm must be a number >= 0 or None, got {value!r}.")
    return float(value)


def apply_module_clipping(config: dict[str, Any], module: Any, explicit: bool) -> None:
    """Write the module's clip into the base DeepSpeed ``config``, unless the user set it (``explicit``)."""
    clip = module_gradient_clipping(module)
    if clip is None:
        return
    if explicit:
        if float(config.get("gradient_clipping") or 0.0) != clip:
            rank_zero_warn(
                f"{type(module).__name__} asks for gradient-norm clipping at {clip}, but the DeepSpeed config sets "
                f"gradient_clipping={config.get('gradient_clipping')}; the config's value is used."
            )
        return
    config["gradient_clipping"] = clip


def follow_engine_forward(engine: Any) -> list[RemovableHandle]:
    """Make each call of a trained child do what ``DeepSpeedEngine.forward`` does around it; returns the handles.

    The module calls its children, never their engines. Without ZeRO's micro-step start
    (``clear_backward_seen_flag``) each micro-batch's gradient replaced the previous one under ZeRO-3.
    """
    from deepspeed.runtime.base_optimizer import ZeROOptimizer
    from deepspeed.runtime.utils import register_output_backward_hooks

    if engine.torch_autocast_enabled():
        raise ValueError(
            "HybridDeepSpeedStrategy: the DeepSpeed config enables torch_autocast, which DeepSpeed applies inside "
            "DeepSpeedEngine.forward; with several engines the module calls its children directly, so it would be "
            "silently skipped. Use Trainer(precision='bf16-mixed') instead and remove torch_autocast."
        )

    def start_micro_step(module: nn.Module, args: Any) -> None:
        if isinstance(engine.optimizer, ZeROOptimizer):
            engine.optimizer.clear_backward_seen_flag()

    def hook_backward_prologue(module: nn.Module, args: Any, output: Any) -> None:
        if torch.is_grad_enabled():
            register_output_backward_hooks(output, preprocess_once_fn=engine._backward_prologue,
                                           preprocess_per_tensor_fn=engine._backward_prologue_per_tensor)

    child = engine.module
    return [child.register_forward_pre_hook(start_micro_step, prepend=True),
            child.register_forward_hook(hook_backward_prologue)]


def keep_accumulated_gradients(optimizer: Any, engine: Any) -> None:
    """Make ``optimizer.zero_grad()`` (a ``LightningOptimizer``) a no-op between an engine's accumulation steps.

    DeepSpeed zeroes the gradients itself at each update; a module's ``zero_grad`` in between discarded them.
    """
    if engine.gradient_accumulation_steps() == 1:
        return
    zero_grad = optimizer.zero_grad

    def zero_grad_between_updates(*args: Any, **kwargs: Any) -> None:
        if engine.micro_steps % engine.gradient_accumulation_steps() == 0:
            zero_grad(*args, **kwargs)

    optimizer.zero_grad = zero_grad_between_updates


def optimizer_offloaded(config: dict[str, Any]) -> bool:
    """Whether ZeRO steps the optimizer on the CPU (``offload_optimizer`` to ``cpu`` or ``nvme``)."""
    offload = (config.get("zero_optimization") or {}).get("offload_optimizer") or {}
    return offload.get("device", "none") in ("cpu", "nvme")


def offload_ready_optimizer(optimizer: Optional[Optimizer], config: dict[str, Any]) -> Optional[Optimizer]:
    """The optimizer to hand DeepSpeed: ``DeepSpeedCPUAdam`` in place of torch's Adam/AdamW when it is offloaded.

    DeepSpeed refuses other client optimizers under offload (docs/concepts.md). It shares the module optimizer's
    param-group dicts, so its learning-rate scheduler keeps driving it.
    """
    if optimizer is None or not optimizer_offloaded(config) or config.get("zero_force_ds_cpu_optimizer") is False:
        return optimizer
    from deepspeed.ops.adam import DeepSpeedCPUAdam

    if isinstance(optimizer, DeepSpeedCPUAdam) or type(optimizer).__name__ == "DeepSpeedCPULion":
        return optimizer
    name = type(optimizer).__name__
    if not isinstance(optimizer, torch.optim.Adam):
        raise ValueError(
            f"offload_optimizer steps the optimizer on the CPU with DeepSpeedCPUAdam, which stands in for torch's "
            f"Adam/AdamW only, not {name}. Use AdamW, or set \"zero_force_ds_cpu_optimizer\": false in the "
            "DeepSpeed config (strategy config=...) to step it as it is on the CPU (slower), or do not offload."
        )
    unsupported = [k for k in ("amsgrad", "maximize") if any(g.get(k) for g in optimizer.param_groups)]
    if unsupported:
        raise ValueError(f"offload_optimizer: DeepSpeedCPUAdam has no {' or '.join(unsupported)}; turn it off in "
                         f"the {name} the module builds, or do not offload.")
    defaults = optimizer.defaults
    try:
        with cpu_info_asked_once():
            return keep_param_group_dicts(DeepSpeedCPUAdam(
                optimizer.param_groups, lr=float(defaults["lr"]), betas=tuple(defaults["betas"]),
                eps=defaults["eps"], weight_decay=defaults["weight_decay"], bias_correction=True,
                adamw_mode=bool(defaults.get("decoupled_weight_decay", isinstance(optimizer, torch.optim.AdamW))),
            ))
    except RuntimeError as err:
        raise RuntimeError(
            f"offload_optimizer needs DeepSpeedCPUAdam, whose CPU kernel DeepSpeed JIT-builds with a C++ compiler "
            f"({err}). Install g++ (build-essential), or set \"zero_force_ds_cpu_optimizer\": false in the DeepSpeed "
            f"config to step the module's {name} on the CPU instead (slower)."
        ) from err


def keep_param_group_dicts(optimizer: Optimizer) -> Optimizer:
    """Make ``load_state_dict`` write the loaded group values into the existing param-group dicts.

    torch's ``Optimizer.load_state_dict`` replaces every group dict; ZeRO calls it on resume, and the scheduler (and
    the learning-rate monitor) would keep driving the module optimizer's old dicts, leaving the applied lr frozen.
    """
    load = optimizer.load_state_dict

    def load_into_shared_groups(state_dict: dict[str, Any]) -> None:
        shared = optimizer.param_groups
        load(state_dict)
        for group, loaded in zip(shared, optimizer.param_groups):
            group.update({key: value for key, value in loaded.items() if key != "params"})
        optimizer.param_groups = shared

    optimizer.load_state_dict = load_into_shared_groups  # type: ignore[method-assign]
    return optimizer


_CPU_INFO: dict[str, Any] = {}


@contextlib.contextmanager
def cpu_info_asked_once() -> Iterator[None]:
    """While building ``DeepSpeedCPUAdam``, answer ``cpuinfo.get_cpu_info()`` from this process's first answer.

    py-cpuinfo runs a slow subprocess per call, and DeepSpeed asks twice per ``DeepSpeedCPUAdam``.
    """
    try:
        import cpuinfo
    except ImportError:  # DeepSpeed falls back to lscpu itself
        yield
        return
    original = cpuinfo.get_cpu_info

    def asked_once() -> dict[str, Any]:
        if not _CPU_INFO:
            _CPU_INFO.update(original())
        return dict(_CPU_INFO)

    cpuinfo.get_cpu_info = asked_once
    try:
        yield
    finally:
        cpuinfo.get_cpu_info = original
