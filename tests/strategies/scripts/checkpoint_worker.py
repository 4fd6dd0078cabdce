"""Checkpoint scenarios of HybridDeepSpeedStrategy beyond resuming fit; run by torchrun (gloo, CPU).

Usage: checkpoint_worker.py SCENARIO OUTDIR [--stage N]. Each rank writes OUTDIR/<scenario>-rank<R>.json.
Scenarios:
  evaluate  fit a two-engine module with a frozen child, keep the best checkpoint, then validate/test from it
            (in the fitted trainer with ckpt_path="best", and in a fresh trainer on a fresh module)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch.distributed as dist
import torch.nn.functional as F
from lightning import seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint

sys.path.insert(0, str(Path(__file__).parent))
from strategy_worker import TwoEngines, loader, trainer  # noqa: E402


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


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("scenario")
    parser.add_argument("outdir", type=Path)
    parser.add_argument("--stage", type=int, default=3)
    args = parser.parse_args()
    world, rank = int(os.environ["WORLD_SIZE"]), int(os.environ["RANK"])
    result = {"evaluate": run_evaluate}[args.scenario](args, world)
    args.outdir.mkdir(parents=True, exist_ok=True)
    (args.outdir / f"{args.scenario}-stage{args.stage}-rank{rank}.json").write_text(json.dumps(result))
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
