"""Exponential moving average of a model's weights (DeepSpeed-Chat's ``--enable_ema``, beta 0.992).

Each rank averages its own ZeRO-3 partition, without communication; swapping the averages into those tensors
makes validation, generation and export see the EMA weights.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn

from lightning_rlhf.callbacks.export import export_target, find_tokenizer
from lightning_rlhf.models import export_hf
from lightning_rlhf.models.zero3 import local_partition, release_gathered


class EMACallback(Callback):
    """Keep ``ema <- decay * ema + (1 - decay) * weights`` after optimizer steps, in float32.

    Args:
        decay: weight of the old average (DeepSpeed-Chat uses 0.992).
        every_n_steps: update every this many optimizer steps.
        start_step: first optimizer step that updates (before it the EMA tracks the weights exactly).
        model_attr: attribute of the module holding the model (None: ``export_model()`` or ``model``).
        validate_with_ema: run validation with the EMA weights swapped in.
        export_dirpath: if set, the EMA model is exported there (HF folder) at the end of fit.
        merge_lora: merge LoRA adapters when exporting.
    """

    def __init__(
        self,
        decay: float = 0.992,
        every_n_steps: int = 1,
        start_step: int = 0,
        model_attr: str | None = None,
        validate_with_ema: bool = False,
        export_dirpath: str | None = None,
        merge_lora: bool = True,
    ) -> None:
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"EMACallback.decay must be in [0, 1], got {decay}")
        if every_n_steps < 1:
            raise ValueError(f"EMACallback.every_n_steps must be >= 1, got {every_n_steps}")
        self.decay = decay
        self.every_n_steps = every_n_steps
        self.start_step = start_step
        self.model_attr = model_attr
        self.validate_with_ema = validate_with_ema
        self.export_dirpath = export_dirpath
        self.merge_lora = merge_lora
        self.shadow: dict[str, Tensor] = {}
        self._last_step = -1
        self._validation_swap: Any = None

    def _params(self, pl_module: LightningModule) -> dict[str, nn.Parameter]:
        model = export_target(pl_module, self.model_attr)
        return {name: p for name, p in model.named_parameters() if p.requires_grad}

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        params = self._params(pl_module)
        if set(self.shadow) != set(params):
            self.shadow = {n: local_partition(p).detach().float().clone() for n, p in params.items()}
        else:  # restored: move to the parameters' device (a shard saved with its partition's padding: cut it)
            held = {n: local_partition(p) for n, p in params.items()}
            self.shadow = {n: t[: held[n].numel()].to(held[n].device) for n, t in self.shadow.items()}

    @torch.no_grad()
    def update(self, pl_module: LightningModule, decay: float) -> None:
        params = self._params(pl_module)
        shadows = [self.shadow[n] for n in params]
        current = [local_partition(p).detach().float() for p in params.values()]
        torch._foreach_lerp_(shadows, current, 1.0 - decay)

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args: Any) -> None:
        step = trainer.global_step
        if step == self._last_step or step % self.every_n_steps:
            return
        self._last_step = step
        if self._step_skipped(trainer, pl_module):
            return  # an overflow skipped the model's step: the weights did not move, and DeepSpeed counts no step
        self.update(pl_module, self.decay if step >= self.start_step else 0.0)

    def _step_skipped(self, trainer: Trainer, pl_module: LightningModule) -> bool:
        """Whether the averaged model's engine applied no step this batch (HybridDeepSpeedStrategy's record)."""
        applied = getattr(trainer.strategy, "applied_since_reset", None)
        engines = getattr(trainer.strategy, "engines", None) or {}
        target = export_target(pl_module, self.model_attr)
        for name in engines:
            if getattr(pl_module, name, None) is target:
                return not applied(child=name)
        return False

    @contextmanager
    def swapped(self, pl_module: LightningModule) -> Iterator[None]:
        """Run the block with the EMA weights in the model, then put the trained weights back."""
        params = self._params(pl_module)
        backup = {n: local_partition(p).detach().clone() for n, p in params.items()}
        with torch.no_grad():
            for name, param in params.items():
                local_partition(param).copy_(self.shadow[name])
        release_gathered(list(params.values()))  # ZeRO-3's persistent parameters: gathered again from the shards
        try:
            yield
        finally:
            with torch.no_grad():
                for name, param in params.items():
                    local_partition(param).copy_(backup[name])
            release_gathered(list(params.values()))

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.validate_with_ema and self.shadow and not trainer.sanity_checking:
            self._validation_swap = self.swapped(pl_module)
            self._validation_swap.__enter__()

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._validation_swap is not None:
            self._validation_swap.__exit__(None, None, None)
            self._validation_swap = None

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.export_dirpath is None or not self.shadow:
            return
        with self.swapped(pl_module):
            export_hf(export_target(pl_module, self.model_attr), find_tokenizer(trainer, pl_module),
                      Path(self.export_dirpath), merge_lora=self.merge_lora)
        rank_zero_info(f"EMACallback: wrote the EMA model to {self.export_dirpath}")

    def state_dict(self) -> dict[str, Any]:
        """The averages (this rank's shard) on CPU; ``HybridDeepSpeedStrategy`` saves them per rank."""
        return {"shadow": {n: t.cpu() for n, t in self.shadow.items()}, "last_step": self._last_step}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.shadow = dict(state_dict.get("shadow", {}))
        self._last_step = state_dict.get("last_step", -1)
