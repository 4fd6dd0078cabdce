"""Worker for the 2-process sharding test: a real Trainer (DDP, gloo, CPU) reads RLHFDataModule.

Each rank writes what it saw (train and val prompts through Lightning's automatic DistributedSampler,
ptx texts through ``ptx_dataloader``) and the full split it computed, to ``<out>/rank<R>.json``.
Usage: torchrun ... shard_worker.py OUT_DIR TOKENIZER_DIR DATA_FILE
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from lightning.pytorch import LightningModule, Trainer

from lightning_rlhf.data import RLHFDataModule


class Recorder(LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.seen: dict[str, list[str]] = {"train": [], "val": [], "ptx": []}

    def training_step(self, batch, batch_idx):
        assert batch["prompt_attention_mask"][:, -1].all()  # left padded
        self.seen["train"].extend(batch["prompts"])
        return (self.weight * batch["prompt_input_ids"].float().mean()).sum()

    def validation_step(self, batch, batch_idx):
        self.seen["val"].extend(batch["prompts"])

    def on_train_end(self) -> None:
        tokenizer = self.trainer.datamodule.tokenizer
        for batch in self.trainer.datamodule.ptx_dataloader():
            for ids, mask in zip(batch["input_ids"], batch["attention_mask"]):
                self.seen["ptx"].append(tokenizer.decode(ids[mask.bool()], skip_special_tokens=True))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def main(out_dir: str, tokenizer_dir: str, data_file: str) -> None:
    data = RLHFDataModule(tokenizer_dir, stage="rl", sources=[data_file], split="2,4,4", eval_fraction=0.2,
                                batch_size=3, cache_dir=str(Path(out_dir) / "cache"), max_prompt_length=32,
                                max_length=64)
    model = Recorder()
    trainer = Trainer(accelerator="cpu", devices=2, strategy="ddp", max_epochs=1, logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      use_distributed_sampler=True, num_sanity_val_steps=0)
    trainer.fit(model, datamodule=data)
    full = {name: list(data.datasets[name]["prompt"]) for name in ("train", "eval", "ptx")}
    result = {"rank": trainer.global_rank, "world": trainer.world_size, "seen": model.seen, "full": full}
    Path(out_dir, f"rank{trainer.global_rank}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main(*sys.argv[1:4])
