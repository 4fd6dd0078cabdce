"""PPO checkpoints counted in iterations, and a checkpoint callback added on the command line just works."""

from __future__ import annotations

import torch

from lightning_rlhf.callbacks import IterationCheckpoint
from lightning_rlhf.commands.main import main
from tests.modules.test_ppo import make_data, make_module, make_trainer, ppo_paths  # noqa: F401  (fixture)
from tests.test_cli import _fit_args


def test_ppo_checkpoints_fall_every_n_iterations_in_every_epoch(tmp_path, ppo_paths):
    torch.manual_seed(0)
    callback = IterationCheckpoint(every_n_iterations=2, dirpath=str(tmp_path / "ckpt"), save_top_k=-1)
    trainer = make_trainer(tmp_path, max_epochs=2, limit_train_batches=2, enable_checkpointing=True,
                           callbacks=[callback])
    trainer.fit(make_module(ppo_paths, update_epochs=1), datamodule=make_data(ppo_paths))
    assert trainer.global_step == 4 * 4, "4 optimizer steps per PPO iteration (2 mini-batches x actor + critic)"
    names = sorted(p.name for p in (tmp_path / "ckpt").glob("*.ckpt"))
    assert names == ["epoch=0-iteration=2.ckpt", "epoch=1-iteration=4.ckpt", "last.ckpt"], "one in each epoch"
    state = torch.load(tmp_path / "ckpt" / "epoch=1-iteration=4.ckpt", weights_only=False)
    assert state["loops"]["fit_loop"]["epoch_loop.batch_progress"]["total"]["ready"] == 4
    assert state["global_step"] == 4 * 4


def test_a_checkpoint_callback_on_the_command_line_turns_checkpointing_on(tiny_model_factory, tmp_path):
    """docs/cli.md says to add one to resume; the CLI's enable_checkpointing=false default refused it."""
    actor = tiny_model_factory("llama", hidden_size=32, num_layers=1, num_heads=2)
    reward = tiny_model_factory("llama", head="value", hidden_size=32, num_layers=1, num_heads=2)
    cli = main(["ppo", *_fit_args(tmp_path, "--model.actor", str(actor), "--model.reward_model", str(reward),
                                  "--model.generation.max_new_tokens", "3", "--trainer.limit_train_batches", "1",
                                  "--trainer.callbacks+=lightning_rlhf.callbacks.IterationCheckpoint",
                                  "--trainer.callbacks.every_n_iterations=1",
                                  f"--trainer.callbacks.dirpath={tmp_path / 'ckpt'}")])
    assert cli.trainer.checkpoint_callback is not None
    assert sorted(p.name for p in (tmp_path / "ckpt").glob("*.ckpt")) == ["epoch=0-iteration=1.ckpt", "last.ckpt"]
