"""An existing Lightning project that only switches its Trainer to ``strategy="hybrid_deepspeed"``.

The project: fine-tune a causal LM on lines of text with a plain LightningModule (automatic
optimization, one optimizer), the way countless Lightning projects do. Nothing in it knows about
RLHF; ``import lightning_rlhf`` registers the strategy, and ``--strategy`` is the only switch::

    python examples/existing_project/train.py --strategy auto              # Lightning's default
    python examples/existing_project/train.py --strategy hybrid_deepspeed  # ZeRO-3 via DeepSpeed, CPU or GPU
    torchrun --nproc-per-node 2 examples/existing_project/train.py --strategy hybrid_deepspeed --devices 2

Needs: nothing but this package (a tiny model and tokenizer are built locally, or pass ``--model``
with a Hugging Face folder). Takes: see examples/README.md (seconds on a CPU).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from lightning import LightningModule, Trainer
from torch.utils.data import DataLoader
from transformers import AutoModelForCausalLM, AutoTokenizer

import lightning_rlhf  # noqa: F401  (registers "hybrid_deepspeed")

TEXT = [f"{a} plus {b} is {a + b}." for a in range(10) for b in range(10)]


class TextModel(LightningModule):
    """A causal LM trained with next-token cross-entropy: the project's own module, unchanged."""

    def __init__(self, path: str, lr: float = 1e-3) -> None:
        super().__init__()
        self.path, self.lr = path, lr
        self.model = None

    def configure_model(self) -> None:
        # built here so that ZeRO-3 can partition it while it is created
        if self.model is None:
            self.model = AutoModelForCausalLM.from_pretrained(self.path).train()

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = self.model(**batch, labels=batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)).loss
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.model.parameters(), lr=self.lr)


def tiny_model(folder: Path) -> Path:
    """A tiny Llama-style model and tokenizer built from scratch (no download)."""
    from lightning_rlhf.models import save_tiny_model, train_tokenizer

    if not (folder / "config.json").exists():
        save_tiny_model(folder, "llama", train_tokenizer(TEXT, vocab_size=300), hidden_size=64, num_layers=2)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--strategy", default="hybrid_deepspeed")
    parser.add_argument("--devices", type=int, default=1)
    parser.add_argument("--accelerator", default="auto")
    parser.add_argument("--model", default=None, help="a Hugging Face causal-LM folder (default: a tiny one)")
    parser.add_argument("--max_steps", type=int, default=30)
    parser.add_argument("--root", default="runs/existing_project")
    args = parser.parse_args()

    path = args.model or str(tiny_model(Path(args.root) / "tiny"))
    tokenizer = AutoTokenizer.from_pretrained(path)
    batches = DataLoader(TEXT, batch_size=16, shuffle=True,
                         collate_fn=lambda lines: dict(tokenizer(lines, return_tensors="pt", padding=True)))
    trainer = Trainer(strategy=args.strategy, accelerator=args.accelerator, devices=args.devices,
                      max_steps=args.max_steps, default_root_dir=args.root, log_every_n_steps=5,
                      enable_checkpointing=False)
    module = TextModel(path)
    trainer.fit(module, train_dataloaders=batches)
    loss = trainer.callback_metrics["train/loss"]
    print(f"strategy={type(trainer.strategy).__name__}: final train/loss {float(loss):.3f} after {trainer.global_step} steps")


if __name__ == "__main__":
    main()
