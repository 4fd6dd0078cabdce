"""Consolidated Hugging Face folders at the end of fit and for the best validation score."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import nn

from lightning_rlhf.models import export_hf


def export_target(pl_module: LightningModule, model_attr: str | None) -> nn.Module:
    """The model to export: ``pl_module.<model_attr>``, else ``pl_module.export_model()``, else ``.model``."""
    if model_attr is not None:
        model = getattr(pl_module, model_attr, None)
    elif hasattr(pl_module, "export_model"):
        model = pl_module.export_model()
    else:
        model = getattr(pl_module, "model", None)
    if not isinstance(model, nn.Module):
        where = model_attr or "export_model() / model"
        raise AttributeError(f"{type(pl_module).__name__}.{where} is not a model; set HFExportCallback(model_attr=...)")
    return model


def find_tokenizer(trainer: Trainer, pl_module: LightningModule) -> Any | None:
    """The tokenizer to save beside the model: the module's, else the datamodule's, else None."""
    for owner in (pl_module, getattr(trainer, "datamodule", None)):
        tokenizer = getattr(owner, "tokenizer", None) if owner is not None else None
        if tokenizer is not None:
            return tokenizer
    return None


def training_chat_template(trainer: Trainer, tokenizer: Any | None) -> str | None:
    """The chat template reproducing training's prompt format, as the data module's encoder decides it."""
    if tokenizer is None:
        return None
    from lightning_rlhf.data.tokenization import Encoder, TokenizeSettings

    settings = getattr(getattr(trainer, "datamodule", None), "settings", None)
    if not isinstance(settings, TokenizeSettings):
        settings = TokenizeSettings(add_eos=False)
    return Encoder(tokenizer, settings).chat_template()


class HFExportCallback(Callback):
    """Write consolidated Hugging Face folders (safetensors, config, tokenizer) from any ZeRO stage.

    ``<dirpath>/final`` at the end of fit; with ``monitor``, ``<dirpath>/best`` whenever the metric improves. The
    tokenizer carries training's prompt format as its chat template; ``export_artifacts()`` files go beside.

    Args:
        dirpath: output folder (default: ``<trainer.default_root_dir>/hf``).
        monitor: validation metric to track for ``best`` (e.g. ``val/loss``); None exports only ``final``.
        mode: ``min`` or ``max``: which direction of ``monitor`` is better.
        save_final: export ``final`` at the end of fit.
        merge_lora: fold LoRA adapters into the base weights (plain ``from_pretrained`` loads the folder).
        model_attr: attribute of the module holding the model to export (None: ``export_model()`` or ``model``).
    """

    def __init__(
        self,
        dirpath: str | None = None,
        monitor: str | None = None,
        mode: Literal["min", "max"] = "min",
        save_final: bool = True,
        merge_lora: bool = True,
        model_attr: str | None = None,
    ) -> None:
        if mode not in ("min", "max"):
            raise ValueError(f"HFExportCallback.mode must be 'min' or 'max', got {mode!r}")
        self.dirpath = dirpath
        self.monitor = monitor
        self.mode = mode
        self.save_final = save_final
        self.merge_lora = merge_lora
        self.model_attr = model_attr
        self.best_score: float | None = None
        self.best_step: int | None = None

    def _root(self, trainer: Trainer) -> Path:
        return Path(self.dirpath) if self.dirpath is not None else Path(trainer.default_root_dir) / "hf"

    def export(self, trainer: Trainer, pl_module: LightningModule, name: str) -> Path:
        """Export the module's model now to ``<dirpath>/<name>``. Collective: every rank must call it."""
        extra = dict(pl_module.export_artifacts()) if hasattr(pl_module, "export_artifacts") else {}
        extra["export_info.json"] = {
            "global_step": trainer.global_step, "epoch": trainer.current_epoch,
            "monitor": self.monitor, "score": self.best_score if name == "best" else None,
        }
        tokenizer = find_tokenizer(trainer, pl_module)
        path = export_hf(
            export_target(pl_module, self.model_attr), tokenizer, self._root(trainer) / name,
            merge_lora=self.merge_lora, extra_files=extra, chat_template=training_chat_template(trainer, tokenizer),
        )
        rank_zero_info(f"HFExportCallback: wrote {path} (step {trainer.global_step})")
        return path

    def _improved(self, value: float) -> bool:
        if math.isnan(value):
            return False
        if self.best_score is None:
            return True
        return value < self.best_score if self.mode == "min" else value > self.best_score

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Export ``best`` when the monitored metric improved (decided on rank 0, so ranks agree)."""
        if self.monitor is None or trainer.sanity_checking or trainer.state.fn != "fit":
            return
        value = trainer.callback_metrics.get(self.monitor)
        if value is None:
            rank_zero_warn(f"HFExportCallback: metric {self.monitor!r} not logged; known: {sorted(trainer.callback_metrics)}")
            return
        value = float(value)
        if trainer.strategy.broadcast(self._improved(value), src=0):
            self.best_score, self.best_step = value, trainer.global_step
            self.export(trainer, pl_module, "best")

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.save_final:
            self.export(trainer, pl_module, "final")

    def state_dict(self) -> dict[str, Any]:
        """Best score so far, so a resumed run only overwrites ``best`` on a real improvement."""
        return {"best_score": self.best_score, "best_step": self.best_step}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best_score = state_dict.get("best_score")
        self.best_step = state_dict.get("best_step")
