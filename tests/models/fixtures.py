"""Shared builders for the model, SFT/reward module and callback tests (plain functions, no pytest magic)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from lightning_rlhf.data.task import default_task
from lightning_rlhf.models import save_tiny_model, train_tokenizer

SIZES = dict(hidden_size=32, num_layers=2, num_heads=2)


@lru_cache(maxsize=1)
def task_tokenizer():
    """A tokenizer trained on the built-in task's texts (prompts, chosen and rejected responses)."""
    records = default_task().records(1000)
    texts = [r["prompt"] + " " + r[k] for r in records for k in ("chosen", "rejected")]
    return train_tokenizer(texts + ["Human: Assistant:"], vocab_size=300)


def tiny_folder(root: Path, family: str = "llama", head: str = "causal_lm", seed: int = 0, **sizes: int) -> Path:
    """A saved tiny model of ``family`` with the task tokenizer (``sizes`` default to hidden 32, 2 layers)."""
    return save_tiny_model(root / f"{family}-{head}-{seed}", family, task_tokenizer(), head=head, seed=seed,
                           **{**SIZES, **sizes})


def random_batches(n_batches: int = 2, batch: int = 4, length: int = 10, seed: int = 0, vocab: int = 200):
    """SFT and reward batches of random tokens in the CONTRACTS.md formats (right-padded)."""
    gen = torch.Generator().manual_seed(seed)
    sft, reward = [], []
    for _ in range(n_batches):
        ids = torch.randint(4, vocab, (batch, length), generator=gen)
        mask = torch.ones_like(ids)
        mask[0, length - 3:] = 0
        ids = ids.masked_fill(mask == 0, 0)
        labels = ids.masked_fill(mask == 0, -100)
        labels[:, :4] = -100
        sft.append({"input_ids": ids, "attention_mask": mask, "labels": labels})
        rejected = torch.randint(4, vocab, (batch, length - 2), generator=gen)
        reward.append({"chosen_input_ids": ids, "chosen_attention_mask": mask,
                       "rejected_input_ids": rejected, "rejected_attention_mask": torch.ones_like(rejected)})
    return DataLoader(sft, batch_size=None), DataLoader(reward, batch_size=None)
