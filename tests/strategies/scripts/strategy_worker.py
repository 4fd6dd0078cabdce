"""Worker for the HybridDeepSpeedStrategy tests; run by torchrun (1 or 2 ranks, gloo, CPU).

Usage: strategy_worker.py SCENARIOS OUTDIR [options], SCENARIOS comma-separated (run one after the other in the same
processes, so their start-up is paid once). Each rank writes OUTDIR/<scenario>-rank<R>.json.
Scenarios:
  dropin       plain single-model LightningModule, automatic optimization, vs a raw DeepSpeed loop, at each --stages
  two_engines  actor + critic engines learn, a frozen child stays bit-identical (at the highest of --stages)
  resume       two-engine module: --phase full|first|second, checkpoints under OUTDIR
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from lightning import LightningModule, Trainer, seed_everything
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import lightning_rlhf  # noqa: F401  registers "hybrid_deepspeed"
from lightning_rlhf.strategies import HybridDeepSpeedStrategy, MultiEngineBackwardMixin

BATCH = 4


def dataset(world_size: int) -> TensorDataset:
    gen = torch.Generator().manual_seed(1234)
    x = torch.randn(8 * world_size, 8, generator=gen)  # two batches of 4 per rank and epoch
    y = torch.sin(x).sum(-1, keepdim=True)
    return TensorDataset(x, y)


def mlp(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 1))


class Regressor(LightningModule):
    """A plain LightningModule as a user writes it: one model, one optimizer, automatic optimization."""

    def __init__(self):
        super().__init__()
        self.losses: list[float] = []
        self.sharded_at_init = None

    def configure_model(self):
        if hasattr(self, "net"):
            return
        self.net = mlp(0)
        self.sharded_at_init = all(hasattr(p, "ds_id") and p.numel() == 0 for p in self.net.parameters())

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.mse_loss(self.net(x), y)
        self.losses.append(loss.item())
        return loss

    def configure_optimizers(self):
        return torch.optim.AdamW(self.net.parameters(), lr=1e-2)


class TwoEngines(MultiEngineBackwardMixin, LightningModule):
    """Actor and critic each with an optimizer (two DeepSpeed engines); a frozen child used inside the critic loss."""

    def __init__(self):
        super().__init__()
        self.automatic_optimization = False
        self.losses: list[list[float]] = []

    def configure_model(self):
        if hasattr(self, "actor"):
            return
        self.actor, self.critic, self.frozen = mlp(0), mlp(1), mlp(2)
        self.frozen.requires_grad_(False)

    def training_step(self, batch, batch_idx):
        x, y = batch
        actor_opt, critic_opt = self.optimizers()
        actor_loss = F.mse_loss(self.actor(x), y)
        self.manual_backward(actor_loss, actor_opt)
        actor_opt.step()
        actor_opt.zero_grad()
        with torch.no_grad():
            baseline = self.frozen(x)
        critic_loss = F.mse_loss(self.critic(x) + 0.1 * baseline, y)
        self.manual_backward(critic_loss, critic_opt)
        critic_opt.step()
        critic_opt.zero_grad()
        for schedule in self.lr_schedulers():  # manual optimization: the module steps its own schedulers
            schedule.step()
        self.losses.append([actor_loss.item(), critic_loss.item()])
        self.log("actor_loss", actor_loss)

    def configure_optimizers(self):
        actor = torch.optim.AdamW(self.actor.parameters(), lr=1e-2)
        critic = torch.optim.AdamW(self.critic.parameters(), lr=5e-3)
        schedules = [torch.optim.lr_scheduler.StepLR(actor, step_size=2, gamma=0.5),
                     torch.optim.lr_scheduler.StepLR(critic, step_size=2, gamma=0.1)]
        return [actor, critic], schedules


def gathered(module: nn.Module) -> list[list[float]]:
    import deepspeed

    params = list(module.parameters())
    with deepspeed.zero.GatheredParameters(params, enabled=any(hasattr(p, "ds_id") for p in params)):
        return [p.detach().clone().flatten().tolist() for p in params]


def trainer(
    stage: int, max_steps: int, precision: str, root: Path, callbacks=(), by_name: bool = False, strategy=None, **kw
) -> Trainer:
    # by_name: the drop-in spelling a user types after `import lightning_rlhf` (the registered ZeRO-3 preset)
    if strategy is None:
        strategy = "hybrid_deepspeed" if by_name else HybridDeepSpeedStrategy(stage=stage, process_group_timeout_s=120)
    return Trainer(
        strategy=strategy, accelerator="cpu", devices=int(os.environ["WORLD_SIZE"]), max_steps=max_steps,
        precision=precision, logger=False, enable_checkpointing=bool(callbacks), callbacks=list(callbacks),
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(root), **kw,
    )


def loader(world: int) -> DataLoader:
    return DataLoader(dataset(world), batch_size=BATCH, shuffle=False)


def raw_deepspeed_losses(stage: int, steps: int) -> list[float]:
    """The same training with deepspeed.initialize directly: what DeepSpeedStrategy does on CUDA."""
    import deepspeed

    net = mlp(0)
    config = {"train_micro_batch_size_per_gpu": BATCH, "gradient_accumulation_steps": 1,
              "zero_optimization": {"stage": stage}, "zero_allow_untested_optimizer": True,
              "gradient_clipping": 0.0}
    engine, *_ = deepspeed.initialize(model=net, optimizer=torch.optim.AdamW(net.parameters(), lr=1e-2), config=config,
                                      dist_init_required=False, args=argparse.Namespace(device_rank=0))
    losses = []
    batches = [batch for _ in range(steps) for batch in loader(1)][:steps]
    for x, y in batches:
        loss = F.mse_loss(engine(x), y)
        engine.backward(loss)
        engine.step()
        losses.append(loss.item())
    return losses


def run_dropin(args, world: int) -> dict:
    out = {}
    for stage in args.stages:
        seed_everything(0)
        model = Regressor()
        # with one rank, keep the loader's order so the raw DeepSpeed loop below sees the same batches
        tr = trainer(stage, 6, args.precision, args.outdir, max_epochs=-1, use_distributed_sampler=world > 1,
                     by_name=stage == 3)
        tr.fit(model, loader(world))
        out[f"stage{stage}"] = {"losses": model.losses, "sharded_at_init": model.sharded_at_init,
                                "allreduce_skipped": not tr.strategy.model.enable_backward_allreduce}
        if world == 1 and args.precision == "32-true":
            out[f"stage{stage}"]["raw_losses"] = raw_deepspeed_losses(stage, 6)
    return out


def run_two_engines(args, world: int) -> dict:
    seed_everything(0)
    model = TwoEngines()
    tr = trainer(max(args.stages), 9, args.precision, args.outdir, max_epochs=-1)
    frozen_before = None

    class Snapshot(Callback):
        def on_train_start(self, trainer, pl_module):
            nonlocal frozen_before
            frozen_before = gathered(pl_module.frozen)

    tr.callbacks.append(Snapshot())
    tr.fit(model, loader(world))
    engines = tr.strategy.engines
    return {
        "losses": model.losses,
        "frozen_identical": gathered(model.frozen) == frozen_before,
        "engines": sorted(engines),
        "frozen_is_engine": "frozen" in engines,
        "actor_lr": tr.optimizers[0].param_groups[0]["lr"],
    }


class StopAt(Callback):
    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, *args):
        if trainer.global_step >= self.step:
            trainer.should_stop = True


def run_resume(args, world: int) -> dict:
    seed_everything(0)
    model = TwoEngines()
    ckpt_dir = Path(args.outdir) / "ckpts"
    # In manual optimization Lightning counts every optimizer step: two engines make 2 steps per batch, so
    # 8 steps = 4 batches = 2 epochs; the checkpoint is taken after the first epoch (step 4).
    if args.phase == "full":
        trainer(args.stages[0], 8, args.precision, args.outdir, max_epochs=-1).fit(model, loader(world))
    elif args.phase == "first":
        every = ModelCheckpoint(dirpath=ckpt_dir, every_n_train_steps=4, save_top_k=-1, filename="ckpt-{step}")
        trainer(args.stages[0], 8, args.precision, args.outdir, callbacks=[every, StopAt(4)], max_epochs=-1).fit(
            model, loader(world))
        names = [n for n, _ in model.actor.named_parameters()]
        return {"losses": model.losses, "actor": dict(zip(names, gathered(model.actor)))}
    else:
        ckpt = next(ckpt_dir.glob("ckpt-*"))
        tr = trainer(args.stages[0], 8, args.precision, args.outdir, max_epochs=-1)
        tr.fit(model, loader(world), ckpt_path=str(ckpt))
        return {"losses": model.losses, "ckpt": str(ckpt), "actor_lr": tr.optimizers[0].param_groups[0]["lr"],
                "critic_lr": tr.optimizers[1].param_groups[0]["lr"]}
    return {"losses": model.losses}


def main():
    parser = argparse.ArgumentParser()
    scenarios = {"dropin": run_dropin, "two_engines": run_two_engines, "resume": run_resume}
    parser.add_argument("scenarios", help=f"comma-separated, of {sorted(scenarios)} (one after the other)")
    parser.add_argument("outdir", type=Path)
    parser.add_argument("--stages", type=int, nargs="+", default=[3])
    parser.add_argument("--precision", default="32-true")
    parser.add_argument("--phase", default="full")
    args = parser.parse_args()
    world, rank = int(os.environ["WORLD_SIZE"]), int(os.environ["RANK"])
    run_scenarios(parser, scenarios, args, world,
                  lambda name: args.outdir / f"{name}{f'-{args.phase}' if name == 'resume' else ''}-rank{rank}.json")


def run_scenarios(parser: argparse.ArgumentParser, scenarios: dict, args: argparse.Namespace, world: int,
                  path_of: Callable[[str], Path]) -> None:
    """Run the comma-separated ``args.scenarios`` one after the other; each rank writes its result of scenario
    ``name`` to ``path_of(name)``, and after the last one leaves the process group (:func:`finish`)."""
    names = args.scenarios.split(",")
    if not set(names) <= set(scenarios):
        parser.error(f"scenarios must be among {sorted(scenarios)}, got {names}")
    for i, name in enumerate(names):
        result = scenarios[name](args, world)
        if i + 1 < len(names):
            path_of(name).parent.mkdir(parents=True, exist_ok=True)
            path_of(name).write_text(json.dumps(result))
        else:
            finish(path_of(name), result)


def finish(path: Path, result: dict) -> None:
    """Write this rank's result, then leave the process group."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result))
    # Leave the process group explicitly: torn down by the interpreter's exit instead, a gloo worker thread was
    # once destroyed while joinable ("terminate called without an active exception", SIGABRT after fit had ended).
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
