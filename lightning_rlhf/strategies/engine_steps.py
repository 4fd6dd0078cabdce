"""How each DeepSpeed engine's optimizer steps: gradient clipping, micro-steps and accumulation, offload.

Why a module of its own: DeepSpeed decides all three inside ``DeepSpeedEngine`` from its config and from calls
it expects (``engine.forward`` every micro-batch, ``engine.step`` every micro-batch, no ``zero_grad`` between),
while a LightningModule expresses them its own way (``max_grad_norm``, ``opt.step(); opt.zero_grad()``, an
optimizer built in ``configure_optimizers``). The translations live here, next to each other, so the strategy
only calls them.
"""

from __future__ import annotations

from typing import Any, Optional

from lightning.pytorch.utilities.rank_zero import rank_zero_warn


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
