"""Rank 1 dies (``exit``) or hangs (``hang``) mid-training; rank 0 must fail with an error, not hang.

Run as a plain ``python dying_rank.py`` so Lightning's own launcher starts rank 1 (as in a user's
``Trainer(devices=2)`` script); torchrun would kill rank 0 itself and hide what the strategy does.
"""

import os
import sys
import time

import torch
import torch.nn.functional as F
from lightning import LightningModule, Trainer
from torch.utils.data import DataLoader, TensorDataset

import lightning_rlhf  # noqa: F401
from lightning_rlhf.strategies import HybridDeepSpeedStrategy


MODE = sys.argv[2] if len(sys.argv) > 2 else "exit"


class DiesOnRankOne(LightningModule):
    def configure_model(self):
        if not hasattr(self, "net"):
            self.net = torch.nn.Linear(8, 1)

    def training_step(self, batch, batch_idx):
        if batch_idx == 2 and self.global_rank == 1:
            if MODE == "hang":
                print("rank 1 hangs", flush=True)
                time.sleep(3600)
            print("rank 1 exits abruptly", flush=True)
            os._exit(3)
        x, y = batch
        return F.mse_loss(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.net.parameters(), lr=0.1)


if __name__ == "__main__":
    data = TensorDataset(torch.randn(64, 8), torch.randn(64, 1))
    trainer = Trainer(
        strategy=HybridDeepSpeedStrategy(stage=3, process_group_timeout_s=float(sys.argv[1])),
        accelerator="cpu", devices=2, max_steps=20, logger=False, enable_checkpointing=False,
        enable_progress_bar=False,
    )
    trainer.fit(DiesOnRankOne(), DataLoader(data, batch_size=4))
    print("rank 0 finished training without its peer", flush=True)
