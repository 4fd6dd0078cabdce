"""How each DeepSpeed engine's optimizer steps: gradient clipping, micro-steps and accumulation, offload.

Why a module of its own: DeepSpeed decides all three inside ``DeepSpeedEngine`` from its config and from calls
it expects (``engine.forward`` every micro-batch, ``engine.step`` every micro-batch, no ``zero_grad`` between),
while a LightningModule expresses them its own way (``max_grad_norm``, ``opt.step(); opt.zero_grad()``, an
optimizer built in ``configure_optimizers``). The translations live here, next to each other, so the strategy
only calls them.
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
    """The gradient-norm clip a LightningModule asks for, or ``None`` when it asks for none.

    Under automatic optimization that is ``Trainer(gradient_clip_val=...)`` (Lightning's own DeepSpeed path
    already writes it into the config; it is read here for the several-engine path too). Under manual
    optimization Lightning has no clip setting, and ``self.clip_gradients`` does nothing under DeepSpeed (the
    engine clips inside ``engine.step`` from its config), so a manual module states it as a ``max_grad_norm``
    attribute (``PPOModule(max_grad_norm=1.0)``).
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
    """Write the module's clip into the trained engines' base DeepSpeed config (``gradient_clipping``).

    Args:
        config: the strategy's DeepSpeed config (every trained engine's config starts from it; per-engine
            ``engine_configs`` overrides are merged over it later and win).
        module: the LightningModule.
        explicit: whether the user set ``gradient_clipping`` in the config they passed; that value is kept.
    """
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
    """Make each call of a trained child do what ``DeepSpeedEngine.forward`` does around the child's forward.

    Why: with several engines the module calls its children (``self.critic(...)``), never their engines, so
    DeepSpeed's own per-micro-batch bookkeeping would be skipped. The engine's hooks on the child already run
    its forward prologue and epilogue; ``engine.forward`` adds two things around the call, added here as hooks:

    * the start of a micro-step for a ZeRO optimizer (``clear_backward_seen_flag``): ZeRO-3 advances its
      micro-step id there, and without it each micro-batch's gradient replaces the previous one instead of
      adding to it, so gradient accumulation kept only the last micro-batch;
    * hooks on the outputs that run the engine's backward prologue when the backward reaches them: the
      accumulation boundary handed to the ZeRO optimizer, its backward bookkeeping, the NVMe swapper.

    ``torch_autocast`` from the DeepSpeed config, which ``engine.forward`` enters around the call, cannot be
    entered by hooks: it is refused on this path. Returns the hook handles, removed with the engine.
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
    """Make ``optimizer.zero_grad()`` (a ``LightningOptimizer``) leave an engine's accumulating gradients alone.

    Why: DeepSpeed zeroes the gradients itself in the ``engine.step`` that applies an update, and expects nothing
    to zero them between the micro-steps of one update. A manual-optimization module written for any strategy
    calls ``opt.step(); opt.zero_grad()`` every micro-batch (PPOModule does); with ``gradient_accumulation_steps``
    above 1 the ``zero_grad`` after a step that applied no update discarded the micro-batches gathered so far
    (ZeRO-0 lost the gradients, ZeRO-3 restarted its accumulation). So between updates it does nothing; right
    after an update (nothing accumulated) it does what it always did. Only the wrapper the module holds is
    changed: the engine keeps zeroing through its own optimizer.
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

    Why: with ``offload_optimizer`` ZeRO keeps the fp32 weights and the optimizer state on the CPU and steps
    them there. DeepSpeed refuses a client optimizer other than its CPU kernels unless the config says
    ``zero_force_ds_cpu_optimizer: false``, because torch's optimizers are slow on large CPU tensors;
    ``DeepSpeedCPUAdam`` (a JIT-built SIMD, multi-threaded Adam) is what DeepSpeed and DeepSpeed-Chat use for
    offload, and what ZeRO-3 special-cases. It performs the same update as torch's (decoupled weight decay for
    AdamW, bias correction, ``eps`` outside the square root).

    It is built over the *same* param-group dicts (lr, betas, eps, weight decay per group), so a learning-rate
    scheduler created over the module's optimizer keeps driving it. A config with
    ``zero_force_ds_cpu_optimizer: false`` keeps the module's optimizer, as DeepSpeed does.

    Raises:
        ValueError: an offloaded optimizer that is not Adam/AdamW, or uses an option the CPU kernel lacks.
        RuntimeError: the CPU Adam kernel could not be built (no C++ compiler).
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
            return DeepSpeedCPUAdam(
                optimizer.param_groups, lr=float(defaults["lr"]), betas=tuple(defaults["betas"]),
                eps=defaults["eps"], weight_decay=defaults["weight_decay"], bias_correction=True,
                adamw_mode=bool(defaults.get("decoupled_weight_decay", isinstance(optimizer, torch.optim.AdamW))),
            )
    except RuntimeError as err:
        raise RuntimeError(
            f"offload_optimizer needs DeepSpeedCPUAdam, whose CPU kernel DeepSpeed JIT-builds with a C++ compiler "
            f"({err}). Install g++ (build-essential), or set \"zero_force_ds_cpu_optimizer\": false in the DeepSpeed "
            f"config to step the module's {name} on the CPU instead (slower)."
        ) from err


_CPU_INFO: dict[str, Any] = {}


@contextlib.contextmanager
def cpu_info_asked_once() -> Iterator[None]:
    """While building ``DeepSpeedCPUAdam``, answer ``cpuinfo.get_cpu_info()`` from this process's first answer.

    Why: py-cpuinfo runs a Python subprocess on every call (about 1.5 s), and DeepSpeed asks twice per
    ``DeepSpeedCPUAdam`` (its vendor check and its op builder's SIMD check): 3 s per offloaded engine, 6 s for an
    offloaded actor and critic, on every rank. The CPU does not change within a process. Outside this block
    ``cpuinfo`` is left as it was.
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
