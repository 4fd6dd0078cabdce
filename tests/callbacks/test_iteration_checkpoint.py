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


def test_a_save_killed_between_the_two_renames_resumes_from_what_it_left(tmp_path, tiny_model_factory):
    """publish() moves last.ckpt to last.ckpt.old, then the new folder into place; a kill in between left no
    last.ckpt, and ckpt_path="last" started from scratch with a warning. It resumes from the complete folder."""
    import shutil

    from lightning_rlhf.strategies import HybridDeepSpeedStrategy
    from lightning_rlhf.strategies.checkpoint_folder import MARKER_FILE, interrupted_publish, staging_path
    from tests.modules.test_grpo import make_data, make_module, make_trainer

    actor = tiny_model_factory("llama", "causal_lm", seed=0, hidden_size=32, num_layers=2, num_heads=4)
    ckpt = tmp_path / "ckpt"

    def trainer(epochs):
        return make_trainer(tmp_path, max_epochs=epochs, limit_val_batches=0, enable_checkpointing=True,
                            strategy=HybridDeepSpeedStrategy(stage=2),
                            callbacks=[IterationCheckpoint(every_n_iterations=1, dirpath=str(ckpt), save_top_k=0)])

    first = trainer(1)
    first.fit(make_module(actor, update_epochs=1), datamodule=make_data(actor))
    last = ckpt / "last.ckpt"
    assert (last / MARKER_FILE).is_file() and interrupted_publish(last) is None
    last.rename(last.with_name("last.ckpt.old"))  # killed after the first rename
    (staging_path(last)).mkdir()  # the new folder, its shards half written (no marker)
    assert interrupted_publish(last) == last.with_name("last.ckpt.old")
    resumed = trainer(2)
    resumed.fit(make_module(actor, update_epochs=1), datamodule=make_data(actor), ckpt_path="last")
    assert resumed.ckpt_path is not None and resumed.ckpt_path.endswith("last.ckpt.old")
    assert resumed.global_step == 2 * first.global_step  # continued from epoch 1, not from scratch
    assert (last / MARKER_FILE).is_file()  # and published its own checkpoints again

    shutil.copytree(last, staging_path(last), dirs_exist_ok=True)  # a new save complete, marker written...
    last.rename(last.with_name("last.ckpt.old"))  # ...and killed after the first rename: the staging is newer
    assert interrupted_publish(last) == staging_path(last)
