"""The engine layout of a manual-optimization module with one optimizer and a frozen child, in fit and validate.

Run by torchrun on 1 CPU rank; prints one line per finding for tests/strategies/test_hybrid_deepspeed.py.
"""

import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from lightning import LightningModule, Trainer, seed_everything

import lightning_rlhf  # noqa: F401
from lightning_rlhf.strategies import HybridDeepSpeedStrategy, MultiEngineBackwardMixin

sys.path.insert(0, str(Path(__file__).parent))
from strategy_worker import loader, mlp  # noqa: E402


class OneOptimizer(MultiEngineBackwardMixin, LightningModule):
    """A policy trained by one optimizer next to a frozen reference (GRPO's shape)."""

    def __init__(self):
        super().__init__()
        self.automatic_optimization = False
        self.policy, self.reference = mlp(0), mlp(2)
        self.reference.requires_grad_(False)

    def training_step(self, batch, batch_idx):
        x, y = batch
        opt = self.optimizers()
        loss = F.mse_loss(self.policy(x) + 0.1 * self.reference(x), y)
        self.manual_backward(loss, opt)
        opt.step()
        opt.zero_grad()

    def validation_step(self, batch, batch_idx):
        self.log("v", F.mse_loss(self.policy(batch[0]), batch[1]))

    def configure_optimizers(self):
        return torch.optim.SGD(self.policy.parameters(), lr=0.1)


def run(strategy, fn, **kw):
    trainer = Trainer(strategy=strategy, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                      enable_checkpointing=False, enable_model_summary=False, max_steps=2)
    out = getattr(trainer, fn)(kw.pop("model"), loader(1), **kw)
    return trainer, out


seed_everything(0)
model = OneOptimizer()
fitted, _ = run(HybridDeepSpeedStrategy(stage=3), "fit", model=model)
print("fit engines", sorted(fitted.strategy.engines))
ckpt = Path(sys.argv[1]) / "one-optimizer.ckpt"
fitted.save_checkpoint(ckpt)
expected = fitted.validate(model, loader(1), verbose=False)[0]["v"]
validating, out = run(HybridDeepSpeedStrategy(stage=3), "validate", model=OneOptimizer(), ckpt_path=str(ckpt),
                      verbose=False)
print("validate engines", sorted(validating.strategy.engines))
print("validate from checkpoint", out[0]["v"], "expected", expected)
try:
    run(HybridDeepSpeedStrategy(stage=3, config={"optimizer": {"type": "SGD", "params": {"lr": 0.1}},
                                                 "zero_optimization": {"stage": 3}}), "fit", model=OneOptimizer())
except Exception as err:  # noqa: BLE001  the test reads the type and message
    print("config optimizer:", type(err).__name__, err)
if dist.is_initialized():
    dist.destroy_process_group()
