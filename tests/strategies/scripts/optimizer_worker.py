"""Worker for the optimizer-step tests of HybridDeepSpeedStrategy; run by torchrun (gloo, CPU).

Usage: optimizer_worker.py SCENARIOS OUTDIR [--stages ...], SCENARIOS comma-separated (run one after the other in
the same processes, so their start-up is paid once). Rank 0 writes OUTDIR/<scenario>.json for each.
Scenarios (each compares the update DeepSpeed applied with a plain PyTorch loop on the same data):
  clip     gradient-norm clipping from the module's settings: several engines (``max_grad_norm``, one engine
           overridden by ``engine_configs``), a plain single-model module (``Trainer(gradient_clip_val)``) and a
           manual-optimization single-model module (``max_grad_norm``)
  accum    ``engine_configs={"critic": {"gradient_accumulation_steps": 2}}`` over two micro-batches
  presets  every registered preset and every example's strategy section performs a real optimizer step
"""

from __future__ import annotations

import argparse
import copy
import json
import os
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from lightning import LightningModule, Trainer, seed_everything
from lightning.pytorch.callbacks import Callback
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import lightning_rlhf  # noqa: F401  registers the presets
from lightning_rlhf.modules.optim import OptimizerArgs, lightning_optimizer_config
from lightning_rlhf.strategies import HybridDeepSpeedStrategy, MultiEngineBackwardMixin

CLIP = 0.05  # far below the gradient norms of these losses, so clipping always bites


def data(n: int = 8, seed: int = 0) -> TensorDataset:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=gen)
    return TensorDataset(x, 3 * x.sum(-1, keepdim=True) + 1)


def net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))


def gathered(module: nn.Module) -> list[torch.Tensor]:
    import deepspeed

    params = list(module.parameters())
    with deepspeed.zero.GatheredParameters(params, enabled=any(hasattr(p, "ds_id") for p in params)):
        return [p.detach().clone().float() for p in params]


def max_diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max(float((x - y).abs().max()) for x, y in zip(a, b))


def sgd(params, lr: float = 1.0) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=lr)


class TwoEngines(MultiEngineBackwardMixin, LightningModule):
    """Actor and critic, one SGD each, one backward + step + zero_grad per model and batch (as PPOModule does)."""

    def __init__(self, max_grad_norm: float | None = None):
        super().__init__()
        self.automatic_optimization = False
        self.max_grad_norm = max_grad_norm
        self.actor, self.critic = net(0), net(1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        for opt, model in zip(self.optimizers(), (self.actor, self.critic)):
            self.manual_backward(F.mse_loss(model(x), y), opt)
            opt.step()
            opt.zero_grad()

    def configure_optimizers(self):
        return [sgd(self.actor.parameters()), sgd(self.critic.parameters())]


class Single(LightningModule):
    """One model; automatic optimization, or manual with ``max_grad_norm`` when ``manual``."""

    def __init__(self, manual: bool = False, max_grad_norm: float | None = None):
        super().__init__()
        self.automatic_optimization = not manual
        self.max_grad_norm = max_grad_norm
        self.model = net(0)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.mse_loss(self.model(x), y)
        if self.automatic_optimization:
            return loss
        opt = self.optimizers()
        self.manual_backward(loss)
        opt.step()
        opt.zero_grad()

    def configure_optimizers(self):
        return sgd(self.model.parameters())


def fit(module: LightningModule, strategy: Any, batches: int, batch_size: int = 8, **trainer_kw) -> Trainer:
    trainer = Trainer(strategy=strategy, accelerator="cpu", devices=int(os.environ["WORLD_SIZE"]), max_epochs=1,
                      limit_train_batches=batches, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, use_distributed_sampler=False,
                      **trainer_kw)
    trainer.fit(module, DataLoader(data(8 * batches), batch_size=batch_size))
    return trainer


def plain_step(model: nn.Module, batches: list[tuple], clip: float | None, accumulate: int = 1) -> list[torch.Tensor]:
    """The reference: PyTorch only, mean of ``accumulate`` micro-batch gradients, clip_grad_norm_, SGD lr 1."""
    model = copy.deepcopy(model)
    opt = sgd(model.parameters())
    for i, (x, y) in enumerate(batches):
        (F.mse_loss(model(x), y) / accumulate).backward()
        if (i + 1) % accumulate == 0:
            if clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            opt.step()
            opt.zero_grad()
    return [p.detach().clone() for p in model.parameters()]


def loader_batches(n: int) -> list[tuple]:
    return list(DataLoader(data(8 * n), batch_size=8))


def run_clip(args) -> dict:
    out: dict[str, Any] = {}
    x_y = loader_batches(1)
    for stage in args.stages:
        seed_everything(0)
        module = TwoEngines(max_grad_norm=CLIP)
        actor0, critic0 = copy.deepcopy(module.actor), copy.deepcopy(module.critic)
        strategy = HybridDeepSpeedStrategy(stage=stage, engine_configs={"critic": {"gradient_clipping": 2 * CLIP}})
        fit(module, strategy, 1)
        out[f"two_engines_stage{stage}"] = {
            "actor": max_diff(gathered(module.actor), plain_step(actor0, x_y, CLIP)),
            "critic": max_diff(gathered(module.critic), plain_step(critic0, x_y, 2 * CLIP)),
            "unclipped_would_differ": max_diff(plain_step(actor0, x_y, None), plain_step(actor0, x_y, CLIP)),
        }
        for name, kw, trainer_kw in (("single_auto", {}, {"gradient_clip_val": CLIP}),
                                     ("single_manual", {"manual": True, "max_grad_norm": CLIP}, {})):
            seed_everything(0)
            module = Single(**kw)
            model0 = copy.deepcopy(module.model)
            fit(module, HybridDeepSpeedStrategy(stage=stage), 1, **trainer_kw)
            out[f"{name}_stage{stage}"] = {"model": max_diff(gathered(module.model), plain_step(model0, x_y, CLIP))}
    return out


def run_accum(args) -> dict:
    out: dict[str, Any] = {}
    micro = loader_batches(2)
    for stage in args.stages:
        seed_everything(0)
        module = TwoEngines()
        actor0, critic0 = copy.deepcopy(module.actor), copy.deepcopy(module.critic)
        strategy = HybridDeepSpeedStrategy(stage=stage, engine_configs={"critic": {"gradient_accumulation_steps": 2}})
        after_first: dict[str, list[torch.Tensor]] = {}

        class AfterFirst(Callback):
            def on_train_batch_end(self, trainer, pl_module, *rest):
                if not after_first:
                    after_first["critic"] = gathered(pl_module.critic)

        fit(module, strategy, 2, callbacks=[AfterFirst()])
        out[f"stage{stage}"] = {
            "critic": max_diff(gathered(module.critic), plain_step(critic0, micro, None, accumulate=2)),
            "critic_untouched_after_first": max_diff(after_first["critic"], [p.detach() for p in critic0.parameters()]),
            "actor": max_diff(gathered(module.actor), plain_step(actor0, micro, None)),
        }
    return out


# ---------------------------------------------------------------------------------------------- presets
class AdamTwoEngines(MultiEngineBackwardMixin, LightningModule):
    """PPOModule's optimizer construction (AdamW groups + schedule per child) on two tiny children."""

    def __init__(self):
        super().__init__()
        self.automatic_optimization = False
        self.actor, self.critic, self.frozen = net(0), net(1), net(2).requires_grad_(False)

    def training_step(self, batch, batch_idx):
        x, y = batch
        for opt, model in zip(self.optimizers(), (self.actor, self.critic)):
            self.manual_backward(F.mse_loss(model(x) + 0.1 * self.frozen(x), y), opt)
            opt.step()
            opt.zero_grad()
        for scheduler in self.lr_schedulers():
            scheduler.step()

    def configure_optimizers(self):
        args = OptimizerArgs(learning_rate=1e-2, weight_decay=0.1, warmup_steps=2)
        return [lightning_optimizer_config(self.actor, args, 4, self.trainer),
                lightning_optimizer_config(self.critic, args, 4, self.trainer)]


class AdamSingle(LightningModule):
    """SFTModule's optimizer construction (AdamW groups + per-step schedule) on one tiny model."""

    def __init__(self):
        super().__init__()
        self.model = net(0)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.mse_loss(self.model(x), y)

    def configure_optimizers(self):
        return lightning_optimizer_config(self.model, OptimizerArgs(learning_rate=1e-2, weight_decay=0.1,
                                                                     warmup_steps=2), 4, self.trainer)


def run_preset(spec: dict) -> dict:
    """One short fit under ``spec`` (strategy name or init_args, precision, accumulation, module kind)."""
    seed_everything(0)
    module = AdamTwoEngines() if spec["module"] == "two" else AdamSingle()
    trained = [module.actor, module.critic] if spec["module"] == "two" else [module.model]
    before = [gathered(m) for m in trained]
    frozen = module.frozen if spec["module"] == "two" else None
    frozen_before = gathered(frozen) if frozen is not None else None
    strategy = spec["strategy"] if isinstance(spec["strategy"], str) else HybridDeepSpeedStrategy(**spec["strategy"])
    accumulate = spec.get("accumulate_grad_batches", 1)
    trainer = fit(module, strategy, 2 * accumulate, batch_size=4, precision=spec.get("precision", "32-true"),
                  accumulate_grad_batches=accumulate)
    changed = [max_diff(gathered(m), b) for m, b in zip(trained, before)]
    engines = trainer.strategy.engines.values() if trainer.strategy.engines else [trainer.strategy.model]
    result = {"changed": changed, "finite": all(bool(torch.isfinite(p).all()) for m in trained for p in gathered(m)),
              "optimizers": sorted({type(e.basic_optimizer).__name__ for e in engines
                                    if getattr(e, "basic_optimizer", None) is not None}),
              "lrs": [opt.param_groups[0]["lr"] for opt in trainer.optimizers],
              "scheduler_lrs": [c.scheduler.get_last_lr()[0] for c in trainer.lr_scheduler_configs]}
    if frozen is not None:  # bit-identical up to the engine's cast (bf16-mixed keeps a frozen child in bf16)
        dtype = next(frozen.parameters()).dtype
        result["frozen_unchanged"] = max_diff(gathered(frozen), [p.to(dtype).float() for p in frozen_before]) == 0.0
    return result


def run_presets(args) -> dict:
    results = {}
    for name, spec in json.loads(args.specs).items():
        try:
            results[name] = run_preset(spec)
        except Exception as err:  # the same config error on every rank: report it and go on with the next spec
            results[name] = {"error": f"{type(err).__name__}: {err}"[:400]}
    return results


SCENARIOS: dict[str, Callable[[argparse.Namespace], dict]] = {"clip": run_clip, "accum": run_accum,
                                                               "presets": run_presets}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("scenarios", help=f"comma-separated, of {sorted(SCENARIOS)}")
    parser.add_argument("outdir", type=Path)
    parser.add_argument("--stages", type=int, nargs="+", default=[0, 2, 3])
    parser.add_argument("--specs", default="{}")
    args = parser.parse_args()
    scenarios = args.scenarios.split(",")
    if not set(scenarios) <= set(SCENARIOS):
        parser.error(f"scenarios must be among {sorted(SCENARIOS)}, got {scenarios}")
    for scenario in scenarios:
        result = SCENARIOS[scenario](args)
        if int(os.environ["RANK"]) == 0:
            args.outdir.mkdir(parents=True, exist_ok=True)
            (args.outdir / f"{scenario}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main()
