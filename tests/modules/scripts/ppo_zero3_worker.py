"""Worker of the PPO ZeRO-3 test; run by torchrun (2 ranks, gloo, CPU).

Usage: ppo_zero3_worker.py ACTOR_DIR REWARD_DIR OUTDIR --phase {killed,resumed}

``killed``: PPO under ``HybridDeepSpeedStrategy(stage=3, inference_tp_size=2, offload_frozen_models=True)``
for 2 epochs of 2 iterations; a checkpoint (a directory with every engine) is written after epoch 1, and
every rank SIGKILLs itself after the first iteration of epoch 2 (as the second begins), so the launch fails as a crash would.
``resumed``: a fresh launch resumes from that checkpoint and finishes epoch 2.
Rank 0 writes OUTDIR/<phase>.json; every rank writes its local ZeRO-3 shards of the trained models at the
checkpoint (``killed``) and right after resuming (``resumed``) to OUTDIR/shards-<phase>-rank<R>.pt.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
from pathlib import Path

import torch
from lightning.pytorch import Callback, Trainer, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger

import lightning_rlhf  # noqa: F401  registers "hybrid_deepspeed"
from lightning_rlhf.data import RLHFDataModule
from lightning_rlhf.modules import OptimizerArgs
from lightning_rlhf.modules.ppo import GenerationArgs, PPOModule
from lightning_rlhf.strategies import HybridDeepSpeedStrategy

ITERATIONS_PER_EPOCH = 2


def local_shards(module: PPOModule) -> dict[str, torch.Tensor]:
    """This rank's ZeRO-3 partitions of the actor and critic (``ds_tensor``), by parameter name."""
    return {f"{child}.{name}": p.ds_tensor.detach().clone()
            for child in ("actor", "critic") for name, p in getattr(module, child).named_parameters()}


class Probe(Callback):
    """Records the state at the checkpoint / at resume, and crashes the ``killed`` phase mid-epoch 2."""

    def __init__(self, phase: str, out: Path) -> None:
        self.phase, self.out = phase, out
        self.result: dict = {}

    def _rank_file(self, trainer: Trainer) -> Path:
        return self.out / f"shards-{self.phase}-rank{trainer.global_rank}.pt"

    def on_train_start(self, trainer, pl_module) -> None:
        self.result["start"] = {"global_step": trainer.global_step, "epoch": trainer.current_epoch,
                                "kl_coef": pl_module.kl_controller.value}
        if self.phase == "resumed":
            torch.save(local_shards(pl_module), self._rank_file(trainer))

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if self.phase == "killed" and trainer.current_epoch == 0:
            self.result["checkpoint"] = {"global_step": trainer.global_step, "kl_coef": pl_module.kl_controller.value}
            torch.save(local_shards(pl_module), self._rank_file(trainer))

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.phase == "killed" and trainer.current_epoch == 1 and batch_idx == 1:
            self.write(trainer)
            trainer.logger.finalize("killed")
            os.kill(os.getpid(), signal.SIGKILL)  # a crash: no teardown, no further checkpoint

    def on_fit_end(self, trainer, pl_module) -> None:
        self.result["end"] = {"global_step": trainer.global_step, "epoch": trainer.current_epoch,
                              "partitioned": all(hasattr(p, "ds_id") for p in pl_module.parameters()),
                              "engines": sorted(trainer.strategy.engines),
                              "metrics": {k: float(v) for k, v in trainer.callback_metrics.items()}}
        self.write(trainer)

    def write(self, trainer: Trainer) -> None:
        if trainer.is_global_zero:
            self.result["log_dir"] = trainer.logger.log_dir
            (self.out / f"{self.phase}.json").write_text(json.dumps(self.result))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("actor")
    parser.add_argument("reward_model")
    parser.add_argument("outdir")
    parser.add_argument("--phase", choices=["killed", "resumed"], required=True)
    args = parser.parse_args()
    seed_everything(0)
    out = Path(args.outdir)
    module = PPOModule(
        actor=args.actor, reward_model=args.reward_model,
        actor_optimizer=OptimizerArgs(learning_rate=1e-3, scheduler="constant"),
        critic_optimizer=OptimizerArgs(learning_rate=1e-3, scheduler="constant"),
        generation=GenerationArgs(max_new_tokens=4), train_batch_size=2, kl_target=1.0, kl_horizon=100,
        missing_eos_penalty=1.0, log_samples_every_n_steps=1,
    )
    data = RLHFDataModule(args.actor, stage="rl", task_size=200, batch_size=4, eval_fraction=0.1,
                                max_prompt_length=16, max_length=32, cache_dir=str(out / "cache"))
    ckpt_dir = out / "ckpts"
    trainer = Trainer(
        strategy=HybridDeepSpeedStrategy(stage=3, inference_tp_size=2, offload_frozen_models=True),
        accelerator="cpu", devices=2, max_epochs=2, limit_train_batches=ITERATIONS_PER_EPOCH, limit_val_batches=1,
        log_every_n_steps=1, num_sanity_val_steps=0, enable_progress_bar=False, enable_model_summary=False,
        logger=TensorBoardLogger(str(out / "tb"), name="ppo", version=args.phase),
        callbacks=[ModelCheckpoint(dirpath=ckpt_dir, filename="epoch{epoch}", save_top_k=-1, every_n_epochs=1,
                                   save_on_train_epoch_end=True, auto_insert_metric_name=False),
                   Probe(args.phase, out)],
    )
    ckpt = None
    if args.phase == "resumed":
        ckpt = str(next(p for p in sorted(ckpt_dir.iterdir()) if p.name.startswith("epoch0")))
    trainer.fit(module, datamodule=data, ckpt_path=ckpt)


if __name__ == "__main__":
    main()
