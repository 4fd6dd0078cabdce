"""trainer.validate() then fit under hybrid_deepspeed on CPU, for a single-engine and a two-engine module."""
import sys, torch, lightning_rlhf
sys.path.insert(0, "tests/strategies/scripts")
from strategy_worker import Regressor, TwoEngines, loader
from lightning import Trainer
class R(Regressor):
    def validation_step(self, b, i): self.log("v", torch.nn.functional.mse_loss(self.net(b[0]), b[1]))
class T(TwoEngines):
    def validation_step(self, b, i): self.log("v", torch.nn.functional.mse_loss(self.actor(b[0]), b[1]))
for cls in (R, T):
    t = Trainer(strategy="hybrid_deepspeed", accelerator="cpu", devices=1, logger=False, enable_progress_bar=False)
    print(cls.__name__, t.validate(cls(), loader(1), verbose=False))
    t2 = Trainer(strategy="hybrid_deepspeed", accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, max_steps=2, enable_checkpointing=False)
    m = cls(); t2.fit(m, loader(1)); print("fit-after-validate ok", cls.__name__)
