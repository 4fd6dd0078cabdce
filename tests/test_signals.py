"""What a user watches: the progress bar shows PPO's reward, KL and task success; data reports print once;
``--print_config`` shows the real defaults of the optimizer and generation settings."""

from __future__ import annotations

import logging

import pytest
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.callbacks import TQDMProgressBar

from lightning_rlhf.data import RLHFDataModule
from lightning_rlhf.modules import SFTModule
from tests.modules.test_ppo import make_data, make_module, make_trainer, ppo_paths  # noqa: F401  (fixture)
from tests.test_cli import _print_config


class BarMetrics(Callback):
    """What the progress bar displays after each training batch."""

    def __init__(self) -> None:
        self.shown: list[dict] = []

    def on_train_batch_end(self, trainer, pl_module, *args) -> None:
        self.shown.append(dict(trainer.progress_bar_callback.get_metrics(trainer, pl_module)))


def test_progress_bar_shows_reward_kl_and_task_success(tmp_path, ppo_paths):
    bar = BarMetrics()
    trainer = make_trainer(tmp_path, enable_progress_bar=True, callbacks=[TQDMProgressBar(), bar])
    trainer.fit(make_module(ppo_paths), datamodule=make_data(ppo_paths))
    assert len(bar.shown) == 2
    for shown in bar.shown:
        assert {"ppo/reward_mean", "ppo/kl", "ppo/task_success"} <= set(shown), shown
    assert bar.shown[-1]["ppo/kl"] == pytest.approx(float(trainer.callback_metrics["ppo/kl"]), abs=1e-3)


def test_data_lines_are_printed_once_across_validate_fit_validate(tmp_path, tiny_model_factory, caplog):
    """What the pipeline does with one data module: validate, fit, validate (before: every line three times)."""
    model = tiny_model_factory("llama", hidden_size=32, num_layers=1, num_heads=2)
    data = RLHFDataModule(str(model), stage="sft", task_size=100, max_prompt_length=16, max_length=24,
                                cache_dir=str(tmp_path / "cache"))
    module = SFTModule(str(model))
    trainer = Trainer(accelerator="cpu", devices=1, max_steps=1, limit_val_batches=1, logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, default_root_dir=str(tmp_path),
                      inference_mode=False)
    with caplog.at_level(logging.INFO):
        trainer.validate(module, datamodule=data, verbose=False)
        trainer.fit(module, datamodule=data)
        trainer.validate(module, datamodule=data, verbose=False)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("[data]")]
    assert len(lines) == 3 and len(set(lines)) == 3, lines  # the source, sft train, sft eval


def test_print_config_shows_the_real_optimizer_and_generation_defaults(capsys):
    ppo = _print_config(capsys, "ppo", "fit")["model"]
    assert ppo["actor_optimizer"]["learning_rate"] == 9.65e-6 and ppo["critic_optimizer"]["learning_rate"] == 5e-6
    assert ppo["actor_optimizer"]["scheduler"] == "cosine"
    assert ppo["generation"] == {"max_new_tokens": 256, "do_sample": True, "temperature": 1.0, "top_k": 0,
                                 "top_p": 1.0}
    for stage in ("sft", "reward"):
        assert _print_config(capsys, stage, "fit")["model"]["optimizer"]["learning_rate"] == 1e-5


def test_the_shared_defaults_are_copied_not_aliased(ppo_paths):
    first, second = make_module(ppo_paths, actor_optimizer=None), make_module(ppo_paths, actor_optimizer=None)
    first.actor_optimizer.learning_rate = 1.0
    assert second.actor_optimizer.learning_rate == 9.65e-6
