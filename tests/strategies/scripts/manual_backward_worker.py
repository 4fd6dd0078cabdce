"""One process, one engine (a manual-optimization module with one optimizer): ``manual_backward(loss, opt)``.

Lightning passes the optimizer positionally; it names the engine to step and must not reach DeepSpeed's
``engine.backward(loss, retain_graph=...)``, where a truthy optimizer would keep every step's graph alive.
Prints ``graph freed after manual_backward: True|False`` and ``weights moved: True|False``.
"""

from __future__ import annotations

import torch
from lightning import LightningModule, Trainer
from torch.utils.data import DataLoader

from lightning_rlhf.strategies import HybridDeepSpeedStrategy


class Manual(LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.layer = torch.nn.Linear(4, 1)
        self.freed: list[bool] = []

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        opt = self.optimizers()
        loss = self.layer(batch).pow(2).mean()
        self.manual_backward(loss, opt)
        try:
            loss.backward()  # only possible if the first backward kept the graph
            self.freed.append(False)
        except RuntimeError:
            self.freed.append(True)
        opt.step()
        opt.zero_grad()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(torch.randn(8, 4, generator=torch.Generator().manual_seed(0)), batch_size=4)


if __name__ == "__main__":
    torch.manual_seed(0)
    module = Manual()
    before = module.layer.weight.detach().clone()
    trainer = Trainer(strategy=HybridDeepSpeedStrategy(stage=2), accelerator="cpu", devices=1, max_steps=2,
                      logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False)
    trainer.fit(module)
    print(f"graph freed after manual_backward: {all(module.freed) and len(module.freed) == 2}")
    print(f"weights moved: {not torch.equal(before, module.layer.weight.detach())}")
