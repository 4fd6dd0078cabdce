"""How each DeepSpeed engine's optimizer steps: gradient clipping, micro-steps and accumulation, offload.

Why a module of its own: DeepSpeed decides all three inside ``DeepSpeedEngine`` from its config and from calls
it expects (``engine.forward`` every micro-batch, ``engine.step`` every micro-batch, no ``zero_grad`` between),
while a LightningModule expresses them its own way (``max_grad_norm``, ``opt.step(); opt.zero_grad()``, an
optimizer built in ``configure_optimizers``). The translations live here, next to each other, so the strategy
only calls them.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from torch import nn
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
