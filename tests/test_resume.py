"""Checkpoints by PPO iteration and exact mid-epoch resume, through ``lightning-rlhf ppo fit`` (tiny models).

A run killed in the middle of an epoch and resumed with ``--ckpt_path last`` must end where an uninterrupted
run ends (global step and iteration), with one continuous curve in TensorBoard.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lightning_rlhf.commands.main import main
from tests.helpers.interrupt import Killed

BATCHES_PER_EPOCH = 4  # data.task_size 50 -> 19 PPO training prompts -> batches of 5, 5, 5, 4 (ragged)
EPOCHS = 2
CURVE = "ppo/reward_mean"


def _config(root: Path, actor: Path, reward: Path, callbacks: list[dict]) -> Path:
    """A ``ppo fit`` config: the docs' recipe (checkpoint callbacks in ``trainer.callbacks``), tiny settings."""
    config = {
        "model": {"actor": str(actor), "reward_model": str(reward), "train_batch_size": 2,
                  "generation": {"max_new_tokens": 3}},
        "data": {"task_size": 50, "batch_size": 5, "max_prompt_length": 16, "max_length": 24,
                 "cache_dir": str(root.parent / "cache")},
        "trainer": {"default_root_dir": str(root), "max_epochs": EPOCHS, "accelerator": "cpu", "devices": 1,
                    "log_every_n_steps": 1, "limit_val_batches": 0, "enable_progress_bar": False,
                    "enable_model_summary": False, "callbacks": callbacks},
    }
    path = root.parent / f"{root.name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _docs_recipe() -> tuple[dict, str]:
    """The checkpoint callback and the resume command of docs/cli.md's "Checkpoints and resume" recipe."""
    text = (Path(__file__).resolve().parents[1] / "docs" / "cli.md").read_text()
    section = text.split("## Checkpoints and resume", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```(\w+)\n(.*?)```", section, re.S)
    config = next(yaml.safe_load(body) for kind, body in blocks if kind == "yaml")
    resume = next(line for kind, body in blocks if kind == "bash" for line in body.splitlines() if "last" in line)
    return config["trainer"]["callbacks"][0], resume.split("#")[0].split()


def _every(n: int, **extra) -> dict:
    """The docs' callback, saving every ``n`` iterations (the docs say 10; these runs have 8)."""
    callback = copy.deepcopy(_docs_recipe()[0])
    callback["init_args"].update(every_n_iterations=n, **extra)
    return callback


def _curve(root: Path) -> list[tuple[int, float]]:
    """(step, value) of ``CURVE`` from every TensorBoard run under ``root``, in the order the runs were made."""
    points = []
    for version in sorted((root / "lightning_logs").iterdir(), key=lambda p: int(p.name.split("_")[1])):
        events = EventAccumulator(str(version), size_guidance={"scalars": 0})
        events.Reload()
        points += [(e.step, e.value) for e in events.Scalars(CURVE)]
    return points


@pytest.fixture(scope="module")
def models(tiny_model_factory):
    return (tiny_model_factory("llama", hidden_size=32, num_layers=1, num_heads=2),
            tiny_model_factory("llama", head="value", hidden_size=32, num_layers=1, num_heads=2))


def test_a_ppo_run_killed_mid_epoch_resumes_from_the_last_iteration_and_ends_like_an_uninterrupted_one(
        models, tmp_path):
    actor, reward = models
    full_root, cut_root = tmp_path / "full", tmp_path / "cut"
    full = main(["ppo", "fit", "--config",
                 str(_config(full_root, actor, reward, [_every(2, dirpath=str(full_root / "ckpt"), save_top_k=-1)]))])
    iterations = BATCHES_PER_EPOCH * EPOCHS
    assert full.trainer.fit_loop.epoch_loop.batch_progress.total.completed == iterations
    # every 2 iterations in both epochs, although global_step advances by 2 x mini-batches per iteration
    # (3 mini-batches of 2 from 5 rollouts, 2 from the ragged batch of 4): by step, epochs would be skipped
    saved = sorted(int(p.stem.split("iteration=")[1]) for p in (full_root / "ckpt").glob("*iteration=*.ckpt"))
    assert saved == list(range(2, iterations + 1, 2))

    # killed in iteration 7 (the 3rd batch of epoch 2), a checkpoint every iteration
    killed_at = BATCHES_PER_EPOCH + 3
    crash = {"class_path": "tests.helpers.interrupt.CrashAtIteration", "init_args": {"iteration": killed_at}}
    config = _config(cut_root, actor, reward, [_every(1), crash])  # default dirpath: <default_root_dir>/checkpoints
    with pytest.raises(Killed):
        main(["ppo", "fit", "--config", str(config)])
    last = torch.load(cut_root / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    epoch_loop = last["loops"]["fit_loop"]["epoch_loop.batch_progress"]
    assert epoch_loop["total"]["processed"] == killed_at - 1, "the checkpoint of the iteration before the kill"
    assert last["epoch"] == 1 and epoch_loop["current"]["processed"] == killed_at - 1 - BATCHES_PER_EPOCH
    # the loader's position in the epoch went into the checkpoint
    assert last["RLHFDataModule"]["train_position"]["batches"] == killed_at - 1 - BATCHES_PER_EPOCH

    command = _docs_recipe()[1]
    assert command == ["lightning-rlhf", "ppo", "fit", "--config", "ppo.yaml", "--ckpt_path", "last"]
    config = _config(cut_root, actor, reward, [_every(1)])
    resumed = main([*command[1:4], str(config), *command[5:]])
    assert resumed.trainer.global_step == full.trainer.global_step
    assert resumed.trainer.fit_loop.epoch_loop.batch_progress.total.completed == iterations

    # one continuous curve: every iteration once, in order, and the same rollouts as the uninterrupted run
    reference, pieced = _curve(full_root), _curve(cut_root)
    assert [step for step, _ in reference] == list(range(iterations))
    assert [step for step, _ in pieced] == list(range(iterations))
    assert [v for _, v in pieced] == pytest.approx([v for _, v in reference], abs=1e-5)


@pytest.mark.parametrize("callback", ["lightning.pytorch.callbacks.ModelCheckpoint"])
def test_a_checkpoint_callback_in_trainer_callbacks_switches_checkpointing_on(models, tmp_path, callback):
    """The CLI's default enable_checkpointing=False made Lightning refuse any ModelCheckpoint a user added."""
    from lightning_rlhf.commands.stages import SFTCLI

    args = ["--model.model", str(models[0]), "--trainer.default_root_dir", str(tmp_path)]
    entry = yaml.safe_dump([{"class_path": callback, "init_args": {"dirpath": str(tmp_path / "ckpt")}}],
                           default_flow_style=True)
    cli = SFTCLI(args=[*args, "--trainer.callbacks", entry], run=False)
    assert type(cli.trainer.checkpoint_callback).__name__ == callback.rsplit(".", 1)[1]
    assert cli.trainer.checkpoint_callback.dirpath == str(tmp_path / "ckpt")
    assert SFTCLI(args=args, run=False).trainer.checkpoint_callback is None, "still no checkpoints by default"


@pytest.mark.slow
@pytest.mark.distributed
def test_a_ppo_checkpoint_of_two_ranks_is_refused_at_once_on_one(models, tmp_path):
    """Written by 2 ranks under hybrid_deepspeed (ZeRO-3), resumed on 1: refused before any engine reads a shard."""
    from tests.helpers.distributed import run_distributed

    actor, reward = models
    root = tmp_path / "two"
    config = yaml.safe_load(_config(root, actor, reward, [_every(1)]).read_text())
    config["trainer"].update(devices=2, strategy="hybrid_deepspeed", max_epochs=1, limit_train_batches=1)
    config["data"]["batch_size"] = 2
    path = tmp_path / "two.yaml"
    path.write_text(yaml.safe_dump(config))
    cli = Path(__file__).resolve().parents[1] / "lightning_rlhf" / "commands" / "main.py"
    run_distributed(cli, "ppo", "fit", "--config", path, nprocs=2)
    assert (root / "checkpoints" / "last.ckpt" / "lightning_rlhf_checkpoint.json").is_file()
    with pytest.raises(AssertionError, match=r"saved by 2 ranks at ZeRO-3, this run has 1: the optimizer shards"):
        run_distributed(cli, "ppo", "fit", "--config", path, "--trainer.devices", "1", "--ckpt_path", "last",
                        nprocs=1)


def test_every_n_iterations_below_one_is_refused():
    from lightning_rlhf.callbacks import IterationCheckpoint

    with pytest.raises(ValueError, match="IterationCheckpoint.every_n_iterations must be >= 1, got 0"):
        IterationCheckpoint(every_n_iterations=0)
