"""Checkpoint scenarios of HybridDeepSpeedStrategy beyond resuming fit; run by torchrun (gloo, CPU).

Usage: checkpoint_worker.py SCENARIOS OUTDIR [--stage N], SCENARIOS comma-separated (run one after the other in the
same processes, so their start-up is paid once). Each rank writes OUTDIR/<scenario>-stage<N>-rank<R>.json.
Scenarios:
  evaluate  fit a two-engine module with a frozen child, keep the best checkpoint, then validate/test from it
            (in the fitted trainer with ckpt_path="best", and in a fresh trainer on a fresh module)
  plain     a checkpoint written by Lightning's own DeepSpeedStrategy code resumed under "hybrid_deepspeed"
  resume    fit a single-engine module from --ckpt (e.g. on another number of ranks than saved it)
  ema       --phase first: ZeRO-3 fit of actor + critic with an EMA of the actor, checkpoint at step 4; --phase second:
            resume from it;
            each phase records the EMA shard this rank holds (at the end, and right after the restore)
  offload   Regressor with offload_optimizer and a warm-up + linear-decay schedule over 8 steps: --phase full runs 8
            steps, --phase first stops at step 4 with a checkpoint, --phase second resumes from it in fresh processes;
            each records the lr the offloaded optimizer applied at every step, its losses and its final weights
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from lightning import seed_everything
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.strategies import DeepSpeedStrategy

from lightning_rlhf.callbacks.ema import EMACallback
from lightning_rlhf.strategies import HybridDeepSpeedStrategy

sys.path.insert(0, str(Path(__file__).parent))
from strategy_worker import Regressor, StopAt, TwoEngines, gathered, loader, run_scenarios, trainer  # noqa: E402


class Evaluated(TwoEngines):
    """TwoEngines with validation and test: the metric reads the actor, the critic and the frozen child."""

    def _metric(self, batch):
        x, y = batch
        return F.mse_loss(self.actor(x), y) + F.mse_loss(self.critic(x) + 0.1 * self.frozen(x), y)

    def validation_step(self, batch, batch_idx):
        self.log("v", self._metric(batch), sync_dist=True)

    def test_step(self, batch, batch_idx):
        self.log("t", self._metric(batch), sync_dist=True)


def run_evaluate(args, world: int) -> dict:
    seed_everything(0)
    best = ModelCheckpoint(dirpath=Path(args.outdir) / "ckpts", monitor="v", mode="min", save_top_k=1)
    fitted = trainer(args.stage, 8, "32-true", args.outdir, callbacks=[best], max_epochs=-1)
    fitted.fit(Evaluated(), loader(world), loader(world))
    out = {"best_score": float(best.best_model_score), "best_path": best.best_model_path}
    out["validate_best"] = fitted.validate(ckpt_path="best", dataloaders=loader(world), verbose=False)[0]["v"]
    out["test_best"] = fitted.test(ckpt_path="best", dataloaders=loader(world), verbose=False)[0]["t"]
    seed_everything(0)
    out["fresh_untrained"] = trainer(args.stage, 1, "32-true", args.outdir).validate(
        Evaluated(), loader(world), verbose=False)[0]["v"]
    out["fresh_from_ckpt"] = trainer(args.stage, 1, "32-true", args.outdir).validate(
        Evaluated(), loader(world), ckpt_path=best.best_model_path, verbose=False)[0]["v"]
    return out


class PlainDeepSpeedSave(HybridDeepSpeedStrategy):
    """Writes checkpoints with Lightning's own ``DeepSpeedStrategy.save_checkpoint`` (no marker, no staging).

    That is the directory a project trained under ``strategy="deepspeed"`` has on disk; Lightning's class itself
    refuses a CPU accelerator, so its save runs here on this strategy's engine (the same ``DeepSpeedEngine``).
    """

    def save_checkpoint(self, checkpoint, filepath, storage_options=None):
        DeepSpeedStrategy.save_checkpoint(self, checkpoint, filepath, storage_options)


def run_plain(args, world: int) -> dict:
    ckpt_dir = Path(args.outdir) / "plain"
    seed_everything(0)
    full = Regressor()
    trainer(args.stage, 8, "32-true", args.outdir, max_epochs=-1).fit(full, loader(world))
    seed_everything(0)
    first = Regressor()
    every = ModelCheckpoint(dirpath=ckpt_dir, every_n_train_steps=4, save_top_k=-1, filename="plain-{step}")
    trainer(args.stage, 8, "32-true", args.outdir, callbacks=[every, StopAt(4)], max_epochs=-1,
            strategy=PlainDeepSpeedSave(stage=args.stage)).fit(first, loader(world))
    (ckpt,) = ckpt_dir.glob("plain-*")
    seed_everything(0)
    second = Regressor()
    trainer(args.stage, 8, "32-true", args.outdir, max_epochs=-1, by_name=True).fit(
        second, loader(world), ckpt_path=str(ckpt))
    return {"full": full.losses, "first": first.losses, "second": second.losses, "ckpt": str(ckpt),
            "files": sorted(p.name for p in ckpt.iterdir())}


def run_resume(args, world: int) -> dict:
    model = Regressor()
    trainer(args.stage, 8, "32-true", args.outdir, max_epochs=-1).fit(model, loader(world), ckpt_path=args.ckpt)
    return {"losses": model.losses}


class SplitRegressor(Regressor):
    """The same model, one DeepSpeed engine per child (as DPO with a reference, or GRPO, get)."""

    engine_per_child = True


def run_resume_split(args, world: int) -> dict:
    try:
        trainer(args.stage, 8, "32-true", args.outdir, max_epochs=-1).fit(SplitRegressor(), loader(world),
                                                                          ckpt_path=args.ckpt)
    except ValueError as err:
        return {"error": str(err)}
    return {"error": None}


class RecordEMA(Callback):
    """This rank's EMA shard right after the restore (train start) and at the end of training."""

    def __init__(self, ema: EMACallback):
        self.ema, self.seen = ema, {}

    def _record(self, when: str) -> None:
        self.seen[when] = {name: t.flatten().tolist() for name, t in self.ema.shadow.items()}

    def on_train_start(self, trainer, pl_module):
        self._record("start")

    def on_train_end(self, trainer, pl_module):
        self._record("end")


def run_ema(args, world: int) -> dict:
    seed_everything(0)
    ema = EMACallback(decay=0.5, model_attr="actor")
    record = RecordEMA(ema)
    ckpt_dir = Path(args.outdir) / "ema"
    if args.phase == "first":
        every = ModelCheckpoint(dirpath=ckpt_dir, every_n_train_steps=4, save_top_k=-1, filename="ema-{step}")
        callbacks = [ema, record, every, StopAt(4)]
        trainer(args.stage, 8, "32-true", args.outdir, callbacks=callbacks, max_epochs=-1).fit(
            TwoEngines(), loader(world))
    else:
        (ckpt,) = ckpt_dir.glob("ema-*")
        trainer(args.stage, 8, "32-true", args.outdir, callbacks=[ema, record], max_epochs=-1).fit(
            TwoEngines(), loader(world), ckpt_path=str(ckpt))
    return record.seen


class ScheduledRegressor(Regressor):
    """Regressor with 2 warm-up steps then linear decay to 0 at step 8, stepped per optimizer step."""

    def __init__(self):
        super().__init__()
        self.applied_lrs: list[float] = []

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(self.net.parameters(), lr=1e-2)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min((step + 1) / 2, (8 - step) / 6))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def on_before_optimizer_step(self, optimizer):
        # what the optimizer DeepSpeed steps reads (DeepSpeedCPUAdam's groups under ZeRO), not the scheduler's view
        engine_optimizer = self.trainer.strategy.deepspeed_engine.optimizer
        base = getattr(engine_optimizer, "optimizer", engine_optimizer)
        self.applied_lrs.append(base.param_groups[0]["lr"])


def run_offload(args, world: int) -> dict:
    seed_everything(0)
    model = ScheduledRegressor()
    ckpt_dir = Path(args.outdir) / f"offload-stage{args.stage}"
    strategy = HybridDeepSpeedStrategy(stage=args.stage, offload_optimizer=True, process_group_timeout_s=120)
    callbacks, ckpt = [], None
    if args.phase == "first":
        callbacks = [ModelCheckpoint(dirpath=ckpt_dir, every_n_train_steps=4, save_top_k=-1), StopAt(4)]
    elif args.phase == "second":
        (ckpt,) = ckpt_dir.glob("*.ckpt")
    trainer(args.stage, 8, "32-true", args.outdir, callbacks=callbacks, max_epochs=-1, strategy=strategy).fit(
        model, loader(world), ckpt_path=str(ckpt) if ckpt else None)
    return {"lrs": model.applied_lrs, "losses": model.losses, "weights": gathered(model.net)}


def main():
    parser = argparse.ArgumentParser()
    scenarios = {"evaluate": run_evaluate, "plain": run_plain, "resume": run_resume, "ema": run_ema,
                 "offload": run_offload, "resume_split": run_resume_split}
    parser.add_argument("scenarios", help=f"comma-separated, of {sorted(scenarios)} (one after the other)")
    parser.add_argument("outdir", type=Path)
    parser.add_argument("--stage", type=int, default=3)
    parser.add_argument("--ckpt")
    parser.add_argument("--phase", default="first")
    args = parser.parse_args()
    world, rank = int(os.environ["WORLD_SIZE"]), int(os.environ["RANK"])
    run_scenarios(parser, scenarios, args, world, lambda name: args.outdir / (
        f"{name}{f'-{args.phase}' if name in ('ema', 'offload') else ''}-stage{args.stage}-rank{rank}.json"))


if __name__ == "__main__":
    main()
