"""A tiny PPO policy trained one iteration and exported, with the greedy validation answers it gave."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lightning_rlhf.callbacks import HFExportCallback
from lightning_rlhf.modules.ppo import PPOModule
from lightning_rlhf.modules.rollout import Generated


@dataclass
class ExportedPolicy:
    """The module after fit, a validation batch, its greedy generation, and the exported folder."""

    module: PPOModule
    batch: dict[str, Any]
    generated: Generated
    folder: Path


def fit_and_export(tmp_path: Path, paths: dict[str, Path]) -> ExportedPolicy:
    """One PPO iteration on the tiny task, exported by :class:`HFExportCallback` to ``tmp_path/hf/final``."""
    from tests.modules.test_ppo import make_data, make_module, make_trainer

    torch.manual_seed(0)
    data, module = make_data(paths), make_module(paths)
    trainer = make_trainer(tmp_path, limit_train_batches=1, callbacks=[HFExportCallback(model_attr="actor")])
    trainer.fit(module, datamodule=data)
    batch = next(iter(data.val_dataloader()))
    generated = module.generate(batch, greedy=True)  # what validation_step decodes
    return ExportedPolicy(module, batch, generated, tmp_path / "hf" / "final")
